"""The official npm client (veryfront@0.1.1031) against our server, end to end.

Runs tests/contract/client_flow.mjs: create, poll, events paging, idempotent create, list with
cursor, cancel twice, 401 and 404 (including another project's run); and
tests/contract/stream_agrees.mjs: the SSE stream of a live run, and one resumed with
Last-Event-ID, against the official client's /events paging of the same run.
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
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn

from runs.api.app import create_app
from runs.cli.embedded import free_port
from runs.services.access import AccessService
from tests.conftest import WorkerPool, unavailable

pytestmark = [pytest.mark.contract, pytest.mark.worker]

CONTRACT_DIR = Path(__file__).parent
TICKS = 5  # stream_agrees.mjs runs task:test/ticker with {n: 5, interval: 0.1}
LIVE = {"pending", "running"}


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


def _run_node(script: Path, env: dict[str, str]) -> Any:
    """Run a contract script and return the JSON object it printed last on stdout."""
    result = subprocess.run(
        ["node", str(script)],
        cwd=CONTRACT_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and lines, (
        f"{script.name} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}"
        f"\nstderr tail:\n{result.stderr[-3000:]}"
    )
    return json.loads(lines[-1])


def _assert_frames_are_the_events(
    frames: list[dict[str, Any]], events: list[dict[str, Any]]
) -> None:
    """Frame by frame: ``id`` is data.event_id, ``event`` is data.event_type, and data is the
    official client's event at that place, field for field."""
    for i, f in enumerate(frames):
        assert f["data"] is not None, f"frame {i} carries no data: {f}"
        assert f["id"] == str(f["data"]["event_id"]), f"frame {i}: id is not data.event_id: {f}"
        assert f["event"] == f["data"]["event_type"], (
            f"frame {i}: event is not data.event_type: {f}"
        )
    streamed = [(f["id"], f["event"], f["data"]) for f in frames]
    paged = [(str(e["event_id"]), e["event_type"], e) for e in events]
    assert streamed == paged, (
        f"stream and /events differ\nstream: {[f['id'] for f in frames]}"
        f"\nevents: {[e['event_id'] for e in events]}"
    )


def _assert_a_complete_ticker_log(events: list[dict[str, Any]], pages: list[Any]) -> None:
    ids = [e["event_id"] for e in events]
    types = [e["event_type"] for e in events]
    assert all(b > a for a, b in pairwise(ids)), f"ids not ascending: {pages}"
    assert all(len(p["ids"]) <= 2 for p in pages), pages
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED", types
    assert types.count("PROGRESS_REPORTED") == TICKS, types
    assert set(events[0]) == {"event_id", "event_type", "payload", "created_at"}, events[0]


def test_the_official_clients_events_paging_and_the_sse_stream_agree(
    node_client: Path, api_url: str, pg_engine: sa.Engine, worker_pool: WorkerPool
) -> None:
    access = AccessService(pg_engine)
    project = access.create_project(f"s-{uuid.uuid4().hex[:10]}")
    _, token = access.create_token(project.slug)
    out = _run_node(
        CONTRACT_DIR / "stream_agrees.mjs",
        {
            "RUNS_API_URL": api_url,
            "RUNS_TOKEN": token,
            "RUNS_PROJECT_ID": project.id,
            "RUNS_PROJECT_SLUG": project.slug,
        },
    )

    # One stream, opened while the run was going, from its first event to RUN_FINISHED.
    live = out["live"]
    assert live["status_at_open"] in LIVE, live["status_at_open"]
    assert live["closed"] and live["leftover"].strip() == "", live
    _assert_a_complete_ticker_log(live["events"], live["pages"])
    _assert_frames_are_the_events(live["frames"], live["events"])
    assert live["frames"][-1]["event"] == "RUN_FINISHED"

    # Dropped after the second tick and resumed with Last-Event-ID: together, the same log.
    resume = out["resume"]
    first, rest = resume["first"]["frames"], resume["rest"]["frames"]
    assert resume["first"]["status_at_open"] in LIVE, resume["first"]["status_at_open"]
    assert [f["event"] for f in first].count("PROGRESS_REPORTED") == 2, first
    assert resume["last_event_id"] == first[-1]["id"]
    assert rest and int(rest[0]["id"]) > int(first[-1]["id"]), (first, rest)
    assert any(f["event"] == "PROGRESS_REPORTED" for f in rest), rest  # cut mid-way
    assert resume["rest"]["closed"] and resume["rest"]["leftover"].strip() == "", resume["rest"]
    _assert_a_complete_ticker_log(resume["events"], resume["pages"])
    _assert_frames_are_the_events(first + rest, resume["events"])
    assert rest[-1]["event"] == "RUN_FINISHED"
