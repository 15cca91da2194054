"""The README's first command: `runs dev` brings the whole system up on embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from runs.cli.embedded import free_port

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
        # As a script would: wait for /healthz, then read dev.json, which is there already.
        deadline = time.monotonic() + 90
        while not healthy(f"http://127.0.0.1:{port}"):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert info_file.exists(), "/healthz answered before dev.json was written"
        info = json.loads(info_file.read_text())
        assert info_file.stat().st_mode & 0o777 == 0o600, "the token file is the owner's only"
        assert set(info) == {"api_url", "project_id", "project_slug", "token", "redis_url"}
        assert f"the API will listen on http://127.0.0.1:{port}" in log_path.read_text()
        while info["token"] not in log_path.read_text():  # the banner follows readiness
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        # The block comes last, after the children's start-up lines, with the web view's address.
        text = log_path.read_text()
        block = text.index("runs dev is up")
        assert 0 <= text.index(" ready.") < block and text.index("[tasks]") < block, text
        assert f"web view:     http://127.0.0.1:{port}/ui" in text[block:]
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


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_port_in_use_is_one_line_naming_it_and_how_to_choose_another(
    tmp_path: Path, repo_root: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "runs.cli", "dev", "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(repo_root)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    assert f"port {port} " in lines[0] and "in use" in lines[0]
    assert "make dev PORT=" in lines[0] and "runs dev --port " in lines[0]
    assert list(tmp_path.iterdir()) == [], "nothing started, nothing written"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "runs dev --port 8000"),
        (("PORT=8123",), "runs dev --port 8123"),
        (("FLOWER=1",), "runs dev --port 8000 --flower"),
    ],
)
def test_make_dev_passes_its_port_and_flower_to_runs_dev(
    repo_root: Path, args: tuple[str, ...], expected: str
) -> None:
    # Not the variables of a make that runs this suite (`make test`): they would turn on its
    # "Entering directory" lines and pass its flags on.
    inherited = ("PORT", "FLOWER", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "--dry-run", "dev", *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert dry_run.stdout.splitlines()[-1].endswith(expected)
