"""The CLI over HTTP (`runs run`, `get`, `events`, `ls`, `cancel`, `approve`, `signal`) as a
subprocess against `runs dev`: no flags needed beside its dev.json, --json output, whole ids in
tables, and the exit codes (0 completed, 1 failed, 2 usage or API error, 124 timed out,
130 cancelled)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runs.cli.embedded import free_port

pytestmark = pytest.mark.worker


@dataclass
class Dev:
    folder: Path
    env: dict[str, str]
    info: dict[str, str]

    def runs(
        self, *args: str, cwd: Path | None = None, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runs.cli", *args],
            cwd=cwd or self.folder,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str) -> Any:
        done = self.runs(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Iterator[Dev]:
    folder = tmp_path_factory.mktemp("cli-dev")
    (folder / "deep" / "er").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNS_", "VERYFRONT_"))}
    env |= {"PYTHONPATH": str(repo_root), "COLUMNS": "70"}
    log_path = folder / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runs.cli",
                "dev",
                "--port",
                str(free_port(0)),
                "--redis-port",
                str(free_port(0)),
            ],
            cwd=folder,
            env=env | {"RUNS_DEFINITIONS": '["workers.examples", "tests.support.definitions"]'},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        made = Dev(folder, env, {})
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            info_file = folder / ".runs" / "dev.json"
            if info_file.exists() and made.runs("ls").returncode == 0:
                made.info = json.loads(info_file.read_text())
                break
            time.sleep(0.3)
        yield made
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_status(dev: Dev, run_id: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while (found := dev.json("get", run_id))["status"] != status:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)


def test_run_follow_needs_no_flags_after_runs_dev_and_shows_events_live(dev: Dev) -> None:
    done = dev.runs("run", "task:echo", "--config", '{"hello": "cli"}', "--follow")
    assert done.returncode == 0, done.stderr
    assert "RUN_STARTED" in done.stdout and "RUN_FINISHED" in done.stdout
    assert "completed" in done.stdout
    # From a folder below the project's, with the config in a file.
    (dev.folder / "deep" / "config.json").write_text('{"from": "a file"}')
    done = dev.runs(
        "run",
        "echo",
        "--config",
        "@../config.json",
        "--wait",
        "--json",
        cwd=dev.folder / "deep" / "er",
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "completed" and run["output"] == {"from": "a file"}
    assert dev.json("get", run["run_id"])["output"] == {"from": "a file"}


def test_exit_codes_follow_the_outcome(dev: Dev) -> None:
    failed = dev.runs("run", "task:fail", "--config", '{"message": "nope"}', "--wait", "--json")
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["error"]["message"] == "nope"
    followed = dev.runs("run", "task:fail", "--config", '{"message": "again"}', "--follow")
    assert followed.returncode == 1 and "again" in followed.stderr
    slow = dev.runs(
        "run",
        "task:sleep",
        "--config",
        '{"seconds": 60}',
        "--public-id",
        "run_cli-slow",
        "--wait",
        "--timeout",
        "1",
    )
    assert slow.returncode == 124, slow.stderr
    assert "run_cli-slow" in slow.stderr
    wait_status(dev, "run_cli-slow", "running")
    assert dev.runs("cancel", "run_cli-slow").returncode == 0
    follow = dev.runs("events", "run_cli-slow", "--follow", "--json")
    assert follow.returncode == 130, follow.stderr
    lines = [json.loads(line) for line in follow.stdout.splitlines()]
    assert lines[-1]["status"] == "cancelled"
    assert [e["event_type"] for e in lines[:-1]][-1] == "RUN_ERROR"
    assert [e["event_id"] for e in lines[:-1]] == [
        e["event_id"]
        for e in map(json.loads, dev.runs("events", "run_cli-slow", "--json").stdout.splitlines())
    ]


def test_ls_shows_whole_ids_in_a_narrow_table_and_as_json(dev: Dev) -> None:
    long_id = "run_" + "x" * 60
    assert dev.runs("run", "echo", "--public-id", long_id, "--wait").returncode == 0
    table = dev.runs("ls", "--target", "task:echo", "--limit", "3")
    assert table.returncode == 0, table.stderr
    assert long_id in table.stdout
    listed = dev.json("ls", "--limit", "2")
    assert len(listed) == 2 and listed[0]["run_id"] == long_id
    assert all(r["target"] == "task:echo" for r in dev.json("ls", "--target", "task:echo"))


def test_approve_and_signal_resume_workflows(dev: Dev) -> None:
    approval = dev.json("run", "workflow:test/approval")["run"]["run_id"]
    event = dev.json("run", "workflow:test/event")["run"]["run_id"]
    wait_status(dev, approval, "waiting")
    wait_status(dev, event, "waiting")
    approved = dev.runs("approve", approval, "review", "--comment", "looks good")
    assert approved.returncode == 0, approved.stderr
    signalled = dev.json("signal", event, "payment.received", "--payload", '{"amount": 3}')
    assert signalled["resumed"] == ["hook"]
    wait_status(dev, approval, "completed")
    wait_status(dev, event, "completed")
    rejected = dev.json("run", "workflow:test/approval")["run"]["run_id"]
    wait_status(dev, rejected, "waiting")
    assert dev.runs("approve", rejected, "review", "--reject").returncode == 0
    wait_status(dev, rejected, "failed")


def test_errors_are_one_line_and_exit_2(dev: Dev, tmp_path: Path) -> None:
    missing = dev.runs("get", "run_missing")
    assert missing.returncode == 2
    assert "404" in missing.stderr and "Traceback" not in missing.stderr
    bad_json = dev.runs("run", "task:echo", "--config", "{nope")
    assert bad_json.returncode == 2 and "--config" in bad_json.stderr
    nowhere = dev.runs("ls", cwd=tmp_path)
    assert nowhere.returncode == 2 and "RUNS_API_URL" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr
    # The environment comes before dev.json, a flag before the environment.
    assert dev.runs("ls", RUNS_API_TOKEN="rt_wrong").returncode == 2
    assert dev.runs("ls", "--token", dev.info["token"], RUNS_API_TOKEN="rt_wrong").returncode == 0


RUN_ID = r"^run_[0-9a-f-]{36}$"


def test_run_prints_the_bare_id_when_piped_so_that_a_script_can_use_it(dev: Dev) -> None:
    started = dev.runs("run", "task:sleep", "--config", '{"seconds": 30}')
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert re.fullmatch(RUN_ID, run_id), started.stdout
    cancelled = dev.runs("cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    quiet = dev.runs("run", "task:echo", "-q")
    assert re.fullmatch(RUN_ID, quiet.stdout.strip()), quiet.stdout


def lines_of(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]


def test_tables_fit_80_columns_keep_ids_whole_and_rows_on_one_line(dev: Dev) -> None:
    echo = dev.runs("run", "task:echo", "--wait", "--json")
    run_id = json.loads(echo.stdout)["run_id"]
    listed = lines_of(dev.runs("ls", "--limit", "5", COLUMNS="80"))
    assert all(len(line) <= 80 for line in listed), listed
    row = next(line for line in listed if run_id in line)
    assert "task:echo" in row and "completed" in row, listed
    slug = dev.info["project_slug"]
    schedule = dev.runs(
        "schedules", "create", slug, "--name", "nightly report for the finance team",
        "--target", "task:echo", "--cron", "0 3 * * *", "--timezone", "Europe/Berlin",
        "--json",
    )  # fmt: skip
    assert schedule.returncode == 0, schedule.stdout + schedule.stderr
    schedule_id = json.loads(schedule.stdout)["id"]
    for width in ("80", "60"):
        table = lines_of(dev.runs("schedules", "list", slug, COLUMNS=width))
        assert all(len(line) <= int(width) for line in table), table
        row = next(line for line in table if schedule_id in line)
        assert "active" in row, table  # the columns kept are readable, not 3 characters wide
    wide = lines_of(dev.runs("schedules", "list", slug, COLUMNS="200"))
    assert any("nightly report for the finance team" in line for line in wide), wide


def test_a_schedule_triggered_from_the_cli_starts_at_once(dev: Dev) -> None:
    slug = dev.info["project_slug"]
    created = dev.runs(
        "schedules", "create", slug, "--name", "now", "--target", "task:echo",
        "--interval", "86400", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    schedule_id = json.loads(created.stdout)["id"]
    triggered = dev.runs("schedules", "trigger", slug, schedule_id, "--json")
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    run_id = json.loads(triggered.stdout)["run_id"]
    started = time.monotonic()
    wait_status(dev, run_id, "completed")  # its job was sent: no sweeper needed (30 s)
    assert time.monotonic() - started < 10


def test_with_no_server_the_cli_says_nothing_answers_there_and_how_to_start_one(
    dev: Dev,
) -> None:
    url = f"http://127.0.0.1:{free_port(0)}"
    started = time.monotonic()
    done = dev.runs("run", "task:echo", "--api-url", url)
    assert done.returncode == 2
    assert time.monotonic() - started < 5
    assert f"nothing answers at {url}" in done.stderr and "runs dev" in done.stderr
    assert "ConnectError" not in done.stderr and "Traceback" not in done.stderr


def test_admin_commands_outside_a_project_folder_say_so_in_one_plain_line(
    dev: Dev, tmp_path: Path
) -> None:
    done = dev.runs("projects", "list", cwd=tmp_path)
    assert done.returncode != 0
    text = (done.stdout + done.stderr).strip()
    assert text.startswith("error: no database here"), text
    assert "Invalid request" not in text and len(text.splitlines()) <= 2
