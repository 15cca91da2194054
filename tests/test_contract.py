"""The official npm client (veryfront@0.1.1031) against our server, end to end.

Runs tests/contract/client_flow.mjs: create, poll, events paging, idempotent create, list with
cursor, cancel twice, 401 and 404 (including another project's run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import uvicorn

from runs.access import AccessService
from runs.api.app import create_app
from runs.embedded import free_port
from tests.conftest import WorkerPool, unavailable

pytestmark = [pytest.mark.contract, pytest.mark.worker]

CONTRACT_DIR = Path(__file__).parent / "contract"


@pytest.fixture(scope="module")
def node_client() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed to drive the official client")
    if not (CONTRACT_DIR / "node_modules" / "veryfront").is_dir():
        subprocess.run(
            [str(npm), "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=CONTRACT_DIR,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return CONTRACT_DIR / "client_flow.mjs"


@pytest.fixture(scope="module")
def api_url(worker_pool: WorkerPool) -> Iterator[str]:
    port = free_port(0)
    settings = worker_pool.settings.model_copy(update={"api_port": port, "auth_cache_seconds": 0})
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_the_official_client_flow_passes_against_our_server(
    node_client: Path, api_url: str, pg_engine: sa.Engine, worker_pool: WorkerPool
) -> None:
    access = AccessService(pg_engine)
    project = access.create_project(f"c-{uuid.uuid4().hex[:10]}")
    _, token = access.create_token(project.slug)
    other = access.create_project(f"f-{uuid.uuid4().hex[:10]}")
    _, other_token = access.create_token(other.slug)
    import httpx

    foreign = httpx.post(
        f"{api_url}/runs",
        headers={"Authorization": f"Bearer {other_token}"},
        json={
            "kind": "task",
            "owner": {"kind": "project", "id": other.id},
            "request": {"target": "task:echo", "config": {}},
        },
    )
    assert foreign.status_code == 202, foreign.text
    result = subprocess.run(
        ["node", str(node_client)],
        cwd=CONTRACT_DIR,
        env={
            **os.environ,
            "RUNS_API_URL": api_url,
            "RUNS_TOKEN": token,
            "RUNS_PROJECT_ID": project.id,
            "RUNS_PROJECT_SLUG": project.slug,
            "RUNS_FOREIGN_RUN_ID": foreign.json()["run"]["run_id"],
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("ok") is False]
    assert result.returncode == 0 and not failed, (
        f"failed steps: {json.dumps(failed, indent=2)}\nstderr tail:\n{result.stderr[-3000:]}"
    )
    summary = lines[-1]["summary"]
    assert summary["failed"] == 0 and summary["passed"] >= 8, summary
