"""The README's first command: `runs dev` brings the whole system up on embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from runs.embedded import free_port

pytestmark = pytest.mark.worker


def test_runs_dev_starts_everything_runs_a_demo_task_and_stops_on_ctrl_c(
    tmp_path: Path, repo_root: Path
) -> None:
    port = free_port(0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNS_")}
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runs.cli",
                "dev",
                "--port",
                str(port),
                "--redis-port",
                str(free_port(0)),
                "--workers",
                "1",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(repo_root)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as in a terminal
        )
    info_file = tmp_path / "data" / "dev.json"
    try:
        deadline = time.monotonic() + 90
        while not info_file.exists():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        info = json.loads(info_file.read_text())
        assert info_file.stat().st_mode & 0o777 == 0o600, "the token file is the owner's only"
        assert set(info) == {"api_url", "project_id", "project_slug", "token"}
        assert info["token"] in log_path.read_text()
        client = httpx.Client(
            base_url=info["api_url"], headers={"Authorization": f"Bearer {info['token']}"}
        )
        created = client.post(
            "/runs",
            json={
                "kind": "task",
                "owner": {"kind": "project", "id": info["project_id"]},
                "request": {"target": "task:echo", "config": {"demo": True}},
            },
        )
        assert created.status_code == 202, created.text
        run_id = created.json()["run"]["run_id"]
        deadline = time.monotonic() + 30
        while (run := client.get(f"/runs/{run_id}").json())["status"] != "completed":
            assert time.monotonic() < deadline, run
            time.sleep(0.1)
        assert run["output"] == {"demo": True}
        # The scheduler runs too, and the worker synced the schedule written in code.
        slug = info["project_slug"]
        source = client.get(f"/projects/{slug}/schedules?source_trigger_id=hourly-echo").json()
        assert [s["definition_source"] for s in source["schedules"]] == ["source"]
        every_second = client.post(
            f"/projects/{slug}/schedules",
            json={"name": "tick", "target": {"kind": "task", "id": "echo"}, "interval_seconds": 1},
        ).json()
        deadline = time.monotonic() + 30
        while (
            not (
                fired := client.get(
                    f"/projects/{slug}/runs?schedule_id={every_second['id']}"
                ).json()
            )["data"]
            or fired["data"][-1]["status"] != "completed"
        ):
            assert time.monotonic() < deadline, fired
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole group gets it at once
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log_path.read_text()
    assert "exited" not in log_path.read_text()  # a clean stop, not a child's failure
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
