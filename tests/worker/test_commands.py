"""Command tasks: a definition's command runs as a subprocess tree that never outlives its run.

The first tests go through a real worker (``durable_pool``: cancel grace 1 s, and
RUNS_TEST_VISIBLE / RUNS_TEST_HIDDEN in the worker's environment); the last ones call
``workers.execution.commands.run_command`` directly with a context that collects what it publishes.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from runs.domain.events import RUN_LOG_CAPTURED, NewEvent
from runs.domain.projects import Project
from runs.domain.runs import Outcome, RunStatus
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import WorkerPool
from tests.support.durable_support import Live, live_services, processes_of_run
from tests.support.helpers import task_request
from workers.execution.commands import Command, run_command
from workers.execution.context import TaskContext

GRACE = 1.0  # RUNS_CANCEL_GRACE_SECONDS of the durable pool

# -- through a real worker -----------------------------------------------------------------


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"c-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def live(
    durable_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog
) -> Iterator[Live]:
    with live_services(durable_pool.settings, pg_engine, event_log) as services:
        yield services


def wait_processes(run_id: str, count: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    found = processes_of_run(run_id)
    while time.monotonic() < deadline:
        found = processes_of_run(run_id)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} has processes {found}, expected {count}")


def wait_no_processes(run_id: str, timeout: float) -> float:
    """Seconds until no process of the run is left; fails after ``timeout``."""
    started = time.monotonic()
    while processes_of_run(run_id):
        assert time.monotonic() - started < timeout, (
            f"processes of {run_id} still alive after {timeout} s: {processes_of_run(run_id)}"
        )
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.worker
def test_a_command_s_result_file_becomes_the_output_and_its_lines_stream_into_the_logs(
    live: Live, project: Project
) -> None:
    run, _ = live.runs.create(
        project, task_request(project, "task:durable/cmd-echo", config={"a": 1})
    )
    done = live.wait_terminal(project, run.run_id)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {
        "config": {"a": 1},
        "env": {"RUNS_TEST_VISIBLE": "seen", "RUNS_TEST_HIDDEN": None},
        "cwd": "/tmp",
        "attempt": 1,
    }
    assert done.exit_code == 0
    assert done.logs is not None
    assert f"hello from {run.run_id}" in done.logs.splitlines()
    assert "to stderr" in done.logs.splitlines()
    events = live.runs.events(project, run.run_id, after=0, limit=1000).items
    types = [e.event_type for e in events]
    logged = {
        e.payload["logs"]: i for i, e in enumerate(events) if e.event_type == RUN_LOG_CAPTURED
    }
    assert f"hello from {run.run_id}" in logged and "to stderr" in logged
    finished = types.index("STEP_FINISHED")
    assert types[-1] == "RUN_FINISHED"
    assert max(logged.values()) < finished < len(types) - 1


@pytest.mark.worker
def test_a_command_exiting_non_zero_fails_with_its_exit_code_and_is_retried(
    live: Live, project: Project
) -> None:
    once, _ = live.runs.create(project, task_request(project, "task:durable/cmd-fail"))
    retried, _ = live.runs.create(
        project, task_request(project, "task:durable/cmd-fail", backoff_limit=1)
    )
    failed = live.wait_terminal(project, once.run_id)
    assert failed.status is RunStatus.FAILED
    assert failed.exit_code == 3
    assert failed.error is not None and failed.error.code == "process_failed"
    assert failed.logs is not None and "failing" in failed.logs
    assert failed.attempt == 1
    again = live.wait_terminal(project, retried.run_id)
    assert again.status is RunStatus.FAILED and again.exit_code == 3
    assert again.error is not None and again.error.code == "process_failed"
    assert again.attempt == 2
    assert [a.attempt for a in again.attempts] == [1, 2]
    assert live.event_types(project, retried.run_id).count("STEP_STARTED") == 2


@pytest.mark.worker
def test_a_result_file_that_is_not_json_fails_the_run_as_invalid_output(
    live: Live, project: Project
) -> None:
    run, _ = live.runs.create(project, task_request(project, "task:durable/cmd-bad-result"))
    done = live.wait_terminal(project, run.run_id)
    assert done.status is RunStatus.FAILED
    assert done.error is not None and done.error.code == "invalid_output"
    assert done.exit_code == 0
    assert done.attempt == 1


@pytest.mark.worker
def test_a_command_s_argv_is_built_from_the_run_s_config(live: Live, project: Project) -> None:
    config = {"json": json.dumps({"x": 1})}
    run, _ = live.runs.create(
        project, task_request(project, "task:durable/cmd-argv", config=config)
    )
    done = live.wait_terminal(project, run.run_id)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {"x": 1}


@pytest.mark.worker
def test_an_argv_the_config_cannot_build_fails_the_run_at_once_without_retries(
    live: Live, project: Project
) -> None:
    run, _ = live.runs.create(
        project, task_request(project, "task:durable/cmd-argv", config={}, backoff_limit=2)
    )
    done = live.wait_terminal(project, run.run_id)
    assert done.status is RunStatus.FAILED and done.attempt == 1
    assert done.error is not None and done.error.code == "invalid_input"
    assert "json" in done.error.message


def test_an_argv_of_other_than_strings_fails_as_invalid_input() -> None:
    collected = Collected()
    outcome = run_command(
        Command(argv=lambda config: ["echo", 3]),  # type: ignore[list-item]
        context(collected),
        grace_seconds=1,
        max_result_bytes=4096,
    )
    assert outcome.error is not None and outcome.error.code == "invalid_input"
    assert outcome.retryable is False


@pytest.mark.worker
def test_cancelling_a_command_leaves_none_of_its_process_tree_behind(
    live: Live, project: Project
) -> None:
    run, _ = live.runs.create(project, task_request(project, "task:durable/cmd-tree"))
    live.wait_running(project, run.run_id)
    assert len(wait_processes(run.run_id, 3)) == 3  # the shell and its two sleepers
    cancelled, _ = live.runs.cancel(project, run.run_id)
    assert cancelled
    wait_no_processes(run.run_id, timeout=3)
    final = live.wait_for(project, run.run_id, lambda r: r.cancel_stopped_at is not None, 5)
    assert final.status is RunStatus.CANCELLED
    assert final.error is not None and final.error.code == "cancelled"


@pytest.mark.worker
def test_a_command_tree_ignoring_sigterm_is_killed_after_the_grace_period(
    live: Live, project: Project
) -> None:
    run, _ = live.runs.create(project, task_request(project, "task:durable/cmd-stubborn-tree"))
    live.wait_running(project, run.run_id)
    pids = wait_processes(run.run_id, 3)
    assert len(pids) == 3
    cancelled, _ = live.runs.cancel(project, run.run_id)
    assert cancelled
    time.sleep(0.3)
    assert sorted(processes_of_run(run.run_id)) == sorted(pids)  # SIGTERM is ignored
    wait_no_processes(run.run_id, timeout=GRACE + 2)
    final = live.wait_for(project, run.run_id, lambda r: r.cancel_stopped_at is not None, 5)
    assert final.status is RunStatus.CANCELLED
    assert final.cancel_requested_at is not None and final.cancel_stopped_at is not None
    stopped_after = (final.cancel_stopped_at - final.cancel_requested_at).total_seconds()
    assert stopped_after >= 0.9 * GRACE


@pytest.mark.worker
def test_a_command_past_its_timeout_is_terminated_and_fails_as_timeout(
    live: Live, project: Project
) -> None:
    run, _ = live.runs.create(
        project, task_request(project, "task:durable/cmd-tree", timeout_seconds=1)
    )
    live.wait_running(project, run.run_id)
    wait_processes(run.run_id, 3)
    done = live.wait_terminal(project, run.run_id, timeout=10)
    assert done.status is RunStatus.FAILED
    assert done.error is not None and done.error.code == "timeout"
    assert done.exit_code == 128 + 15  # ended by SIGTERM
    assert done.attempt == 1
    wait_no_processes(run.run_id, timeout=1)


# -- run_command directly ------------------------------------------------------------------


@dataclass
class Collected:
    """What a context published, with the time each log line arrived."""

    events: list[NewEvent] = field(default_factory=list)
    lines: list[tuple[str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, events: Sequence[NewEvent], batch: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.events.extend(events)
            self.lines.extend(
                (e.payload["logs"], now) for e in events if e.event_type == RUN_LOG_CAPTURED
            )


def context(collected: Collected, config: Any = None) -> TaskContext:
    return TaskContext(
        run_id=f"run_{uuid.uuid4().hex}",
        project_id="p",
        target="task:test/command",
        attempt=1,
        config=config,
        input=None,
        publish=collected.publish,
    )


def run(argv: list[str], ctx: TaskContext, max_result_bytes: int = 4096) -> Outcome:
    return run_command(
        Command(argv=argv), ctx, grace_seconds=GRACE, max_result_bytes=max_result_bytes
    )


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_result_file_over_the_limit_fails_as_output_too_large() -> None:
    ctx = context(Collected())
    write = "import os; open(os.environ['RUNS_RESULT_FILE'], 'w').write('\"' + 'x' * 100 + '\"')"
    outcome = run(python(write), ctx, max_result_bytes=64)
    assert outcome.status is RunStatus.FAILED
    assert outcome.error is not None and outcome.error.code == "output_too_large"
    assert outcome.output is None
    assert outcome.retryable is False
    within = run(python(write), context(Collected()), max_result_bytes=102)
    assert within.status is RunStatus.COMPLETED and within.output == "x" * 100


def test_a_missing_executable_fails_as_process_error_and_is_not_retryable() -> None:
    for missing in (f"no-such-command-{uuid.uuid4().hex[:8]}", "/nonexistent/bin/tool"):
        outcome = run([missing, "--flag"], context(Collected()))
        assert outcome.status is RunStatus.FAILED
        assert outcome.error is not None and outcome.error.code == "process_error"
        assert missing in outcome.error.message
        assert outcome.retryable is False


def test_output_lines_reach_the_context_while_the_command_still_runs() -> None:
    collected = Collected()
    ctx = context(collected)
    started = time.monotonic()
    outcome = run(["sh", "-c", "echo first; sleep 1; echo second >&2"], ctx)
    ended = time.monotonic()
    ctx.flush_events()  # as the worker does before it records the outcome
    assert outcome.status is RunStatus.COMPLETED and outcome.exit_code == 0
    arrived = dict(collected.lines)
    assert set(arrived) == {"first", "second"}
    assert arrived["first"] - started < 0.7  # long before the command's sleep ended
    assert ended - arrived["first"] >= 0.8
    assert arrived["second"] - arrived["first"] >= 0.8
    assert outcome.logs == "first\nsecond"


def test_a_config_over_64_kib_reaches_the_command_by_file_only() -> None:
    report = (
        "import json, os\n"
        "with open(os.environ['RUNS_CONFIG_FILE']) as f:\n"
        "    config = json.load(f)\n"
        "result = {'in_env': 'RUNS_CONFIG' in os.environ, 'size': len(config['blob']),\n"
        "          'same': json.loads(os.environ.get('RUNS_CONFIG', 'null')) == config}\n"
        "open(os.environ['RUNS_RESULT_FILE'], 'w').write(json.dumps(result))\n"
    )
    big = run(python(report), context(Collected(), {"blob": "x" * (64 * 1024 + 1)}))
    assert big.status is RunStatus.COMPLETED, big.error
    assert big.output == {"in_env": False, "size": 64 * 1024 + 1, "same": False}
    small = run(python(report), context(Collected(), {"blob": "x" * 1000}))
    assert small.output == {"in_env": True, "size": 1000, "same": True}
