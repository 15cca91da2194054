"""Retries, timeouts and size caps of task runs, on a real worker pool with short timings.

The pool (``durable_pool``) runs with DURABLE_ENV: retry backoff 0.1 s (max 0.4 s), cancel
grace 1 s, output cap 4096 bytes, log cap 2048 bytes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from runs.domain.events import RunEvent
from runs.domain.projects import Project
from runs.domain.runs import Run, RunStatus
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import WorkerPool
from tests.support.durable_support import Live, live_services
from tests.support.helpers import task_request
from tests.support.redis_hygiene import own
from workers.execution.context import TRUNCATED_MARKER

pytestmark = pytest.mark.worker

# A stopped task gets the cooperative flag, then the interrupt after the grace (1 s), then
# its process is killed after twice the grace: a 1 s timeout ends well within 6 s.
TIMEOUT_BOUND = 6.0


@pytest.fixture(scope="module")
def live(
    durable_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog
) -> Iterator[Live]:
    with live_services(durable_pool.settings, pg_engine, event_log) as services:
        yield services


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"rt-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def counter(redis_url: str) -> Iterator[tuple[str, redis.Redis]]:
    """A fresh Redis key the durability tasks INCR once per execution (config "counter")."""
    client = redis.Redis.from_url(redis_url)
    key = own("runs-test:executions")
    yield key, client
    client.delete(key)
    client.close()


def executions(counter: tuple[str, redis.Redis]) -> int:
    key, client = counter
    value = client.get(key)
    return int(value) if value is not None else 0


def submit(live: Live, project: Project, target: str, **request: Any) -> Run:
    request.setdefault("config", {})
    run, duplicate = live.runs.create(project, task_request(project, f"task:{target}", **request))
    assert not duplicate
    return run


def events_of(live: Live, project: Project, run_id: str) -> list[RunEvent]:
    return list(live.runs.events(project, run_id, after=0, limit=5000).items)


def error_code(run: Run) -> str | None:
    assert run.error is not None, run
    code = run.error.code
    return str(code) if code is not None else None


# -- retries -------------------------------------------------------------------------------


def test_a_flaky_task_completes_on_its_second_attempt_with_both_attempts_recorded(
    live: Live, project: Project
) -> None:
    run = submit(live, project, "durable/flaky", backoff_limit=2)
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.COMPLETED, done
    assert done.attempt == 2
    assert done.output == {"attempt": 2}
    assert done.error is None and done.exit_code == 0
    assert [a.attempt for a in done.attempts] == [1, 2]
    first, second = done.attempts
    assert first.status is RunStatus.FAILED
    assert first.error is not None and first.error.code == "task_error"
    assert "flaky attempt 1" in first.error.message
    assert second.status is RunStatus.COMPLETED and second.error is None
    for record in done.attempts:
        assert record.started_at is not None and record.started_at <= record.finished_at
    # The second attempt waited for the backoff: 0.1 s jittered down by at most half.
    assert second.started_at is not None
    gap = second.started_at - first.finished_at
    assert gap.total_seconds() >= 0.05

    events = events_of(live, project, run.run_id)
    types = [e.event_type for e in events]
    assert types.count("RUN_STARTED") == 1
    assert types.count("RUN_ERROR") == 0
    starts = [e for e in events if e.event_type == "STEP_STARTED"]
    assert len(starts) == 2
    assert starts[1].payload["attempt"] == 2
    retrying = [e for e in events if e.event_type == "STEP_FINISHED" and e.payload.get("retrying")]
    assert len(retrying) == 1
    assert retrying[0].payload["attempt"] == 1
    assert retrying[0].payload["status"] == "failed"
    assert "flaky attempt 1" in retrying[0].payload["message"]
    assert starts[0].event_id < retrying[0].event_id < starts[1].event_id
    assert types[-2:] == ["STEP_FINISHED", "RUN_FINISHED"]
    assert events[-2].payload["status"] == "completed"
    assert [e.event_id for e in events] == sorted({e.event_id for e in events})


def test_a_task_that_keeps_failing_fails_after_exactly_backoff_limit_plus_one_attempts(
    live: Live, project: Project, counter: tuple[str, redis.Redis]
) -> None:
    config = {"succeed_on": 99, "counter": counter[0]}
    run = submit(live, project, "durable/flaky", backoff_limit=1, config=config)
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.FAILED, done
    assert error_code(done) == "task_error"
    assert done.error is not None and "flaky attempt 2" in done.error.message
    assert done.attempt == 2
    assert [(a.attempt, a.status) for a in done.attempts] == [(1, "failed"), (2, "failed")]
    time.sleep(0.5)  # no late attempt sneaks in after the terminal record
    assert executions(counter) == 2
    assert live.runs.get(project, run.run_id).attempt == 2
    types = [e.event_type for e in events_of(live, project, run.run_id)]
    assert types.count("STEP_STARTED") == 2
    assert types[-1] == "RUN_ERROR" and types.count("RUN_ERROR") == 1


@pytest.mark.parametrize("backoff_limit", [0, None], ids=["backoff_limit_0", "default"])
def test_a_run_without_retries_fails_after_its_first_attempt(
    live: Live,
    project: Project,
    counter: tuple[str, redis.Redis],
    backoff_limit: int | None,
) -> None:
    # The worker pool's default_backoff_limit is the settings' default: 0.
    run = submit(
        live, project, "durable/flaky", backoff_limit=backoff_limit, config={"counter": counter[0]}
    )
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.FAILED, done
    assert error_code(done) == "task_error"
    assert done.attempt == 1
    assert done.backoff_limit == backoff_limit
    assert len(done.attempts) == 1 and done.attempts[0].status == "failed"
    assert executions(counter) == 1
    types = [e.event_type for e in events_of(live, project, run.run_id)]
    assert types.count("STEP_STARTED") == 1
    assert types[-2:] == ["STEP_FINISHED", "RUN_ERROR"]


def test_a_definition_backoff_limit_applies_when_the_run_sets_none(
    live: Live, project: Project
) -> None:
    run = submit(live, project, "durable/flaky-by-default")
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.COMPLETED, done
    assert done.backoff_limit is None  # the run echoes its request
    assert done.attempt == 2 and done.output == {"attempt": 2}
    assert [a.status for a in done.attempts] == ["failed", "completed"]


def test_the_run_backoff_limit_wins_over_its_definition_default(
    live: Live, project: Project
) -> None:
    run = submit(live, project, "durable/flaky-by-default", backoff_limit=0)
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.FAILED, done
    assert done.backoff_limit == 0
    assert done.attempt == 1 and len(done.attempts) == 1
    assert error_code(done) == "task_error"


def test_a_non_retryable_error_fails_the_run_at_once_whatever_its_backoff_limit(
    live: Live, project: Project, counter: tuple[str, redis.Redis]
) -> None:
    run = submit(live, project, "durable/fatal", backoff_limit=3, config={"counter": counter[0]})
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.FAILED, done
    assert error_code(done) == "bad_data"
    assert done.error is not None and done.error.message == "the input can never work"
    assert done.attempt == 1 and len(done.attempts) == 1
    assert done.exit_code == 1
    time.sleep(0.3)
    assert executions(counter) == 1
    events = events_of(live, project, run.run_id)
    assert not any(e.payload.get("retrying") for e in events if e.event_type == "STEP_FINISHED")
    assert [e.event_type for e in events][-1] == "RUN_ERROR"


# -- timeouts ------------------------------------------------------------------------------


def test_a_sleeping_task_past_its_timeout_fails_with_timeout_soon_after_the_grace(
    live: Live, project: Project, counter: tuple[str, redis.Redis]
) -> None:
    started = time.monotonic()
    run = submit(
        live,
        project,
        "durable/blind-sleep",
        timeout_seconds=1,
        config={"seconds": 30, "counter": counter[0]},
    )
    done = live.wait_terminal(project, run.run_id, timeout=15)
    elapsed = time.monotonic() - started

    assert done.status is RunStatus.FAILED, done
    assert error_code(done) == "timeout"
    assert done.error is not None and "timed out after 1 s" in done.error.message
    assert done.exit_code == 1
    assert done.output is None
    assert done.attempt == 1 and len(done.attempts) == 1
    assert done.attempts[0].error.code == "timeout"
    assert elapsed < TIMEOUT_BOUND, elapsed
    assert done.duration_ms is not None and 1000 <= done.duration_ms < TIMEOUT_BOUND * 1000
    assert executions(counter) == 1
    assert [e.event_type for e in events_of(live, project, run.run_id)][-1] == "RUN_ERROR"


def test_a_timed_out_attempt_is_retried_while_the_run_has_retries_left(
    live: Live, project: Project, counter: tuple[str, redis.Redis]
) -> None:
    run = submit(
        live,
        project,
        "durable/blind-sleep",
        timeout_seconds=1,
        backoff_limit=1,
        config={"seconds": 30, "counter": counter[0]},
    )
    done = live.wait_terminal(project, run.run_id, timeout=20)

    assert done.status is RunStatus.FAILED, done
    assert error_code(done) == "timeout"
    assert done.attempt == 2
    assert [(a.attempt, a.error and a.error.code) for a in done.attempts] == [
        (1, "timeout"),
        (2, "timeout"),
    ]
    assert executions(counter) == 2
    events = events_of(live, project, run.run_id)
    retrying = [e for e in events if e.event_type == "STEP_FINISHED" and e.payload.get("retrying")]
    assert [e.payload["attempt"] for e in retrying] == [1]


def test_a_cpu_bound_task_past_its_timeout_is_stopped_and_the_worker_keeps_serving(
    live: Live, project: Project, counter: tuple[str, redis.Redis]
) -> None:
    started = time.monotonic()
    run = submit(live, project, "durable/spin", timeout_seconds=1, config={"counter": counter[0]})
    done = live.wait_terminal(project, run.run_id, timeout=15)
    elapsed = time.monotonic() - started

    assert done.status is RunStatus.FAILED, done
    assert error_code(done) == "timeout"
    assert done.exit_code == 1
    assert done.attempt == 1
    assert elapsed < TIMEOUT_BOUND, elapsed
    assert executions(counter) == 1

    # Both pool processes serve again: two quick runs complete side by side.
    started = time.monotonic()
    after = [submit(live, project, "durable/pid") for _ in range(2)]
    finished = [live.wait_terminal(project, r.run_id, timeout=10) for r in after]
    assert all(f.status is RunStatus.COMPLETED for f in finished), finished
    assert time.monotonic() - started < 5


def test_a_cooperative_task_stops_at_its_definition_timeout_without_being_interrupted(
    live: Live, project: Project
) -> None:
    started = time.monotonic()
    run = submit(live, project, "durable/polite-sleep", config={"seconds": 30})
    done = live.wait_terminal(project, run.run_id, timeout=15)
    elapsed = time.monotonic() - started

    assert done.status is RunStatus.FAILED, done
    assert done.timeout_seconds is None  # the definition's timeout applied
    assert error_code(done) == "timeout"
    assert done.error is not None and "timed out after 1 s" in done.error.message
    assert done.attempt == 1
    # It stopped at the flag (1 s), before the interrupt would have come (1 s of grace later).
    assert elapsed < 3, elapsed
    assert done.duration_ms is not None and 1000 <= done.duration_ms < 1900, done.duration_ms


# -- size caps -----------------------------------------------------------------------------


def test_an_output_over_the_size_limit_fails_the_run_without_a_retry(
    live: Live, project: Project
) -> None:
    run = submit(live, project, "durable/big-output", backoff_limit=2, config={"size": 100_000})
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.FAILED, done
    assert error_code(done) == "output_too_large"
    assert done.error is not None and "4096" in done.error.message
    assert done.output is None
    assert done.attempt == 1 and len(done.attempts) == 1
    events = events_of(live, project, run.run_id)
    assert not any(e.payload.get("retrying") for e in events if e.event_type == "STEP_FINISHED")


def test_an_output_within_the_size_limit_is_kept(live: Live, project: Project) -> None:
    run = submit(live, project, "durable/big-output", config={"size": 100})
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.COMPLETED, done
    assert done.output == "x" * 100


def test_the_logs_of_a_chatty_task_are_capped_with_a_truncation_marker(
    live: Live, project: Project
) -> None:
    run = submit(live, project, "durable/chatty", config={"lines": 1000})
    done = live.wait_terminal(project, run.run_id)

    assert done.status is RunStatus.COMPLETED, done
    assert done.output == {"ok": True}
    assert done.logs is not None
    assert len(done.logs.encode()) <= 2048 + 200
    lines = done.logs.split("\n")
    assert lines[-1] == TRUNCATED_MARKER
    assert lines.count(TRUNCATED_MARKER) == 1
    assert lines[0] == "INFO line 0 of a chatty task"
    assert all(line == f"INFO line {i} of a chatty task" for i, line in enumerate(lines[:-1]))

    captured = [
        e.payload["logs"]
        for e in events_of(live, project, run.run_id)
        if e.event_type == "RUN_LOG_CAPTURED"
    ]
    # The events carry the same lines as the record, plus the marker once: not 1000 lines.
    assert captured == lines
    assert len(captured) < 200
