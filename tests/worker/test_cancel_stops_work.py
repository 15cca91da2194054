"""A cancel stops the work, not just the record: a real prefork worker with DURABLE_ENV timings
(lease 1.5 s, sweep 0.3 s, cancel grace 1 s) is made to stop tasks that never look at the flag,
and a job delivered twice, or late, never runs a second time nor overwrites the record."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from runs.domain.events import RUN_ERROR, RUN_FINISHED, RUN_STARTED
from runs.domain.projects import Project
from runs.domain.runs import Run, RunStatus
from runs.schemas.runs import RunOut
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import WorkerPool, durable_settings
from tests.support.durable_support import Live, live_services
from tests.support.helpers import task_request
from tests.support.redis_hygiene import own

pytestmark = pytest.mark.worker

GRACE = 1.0  # RUNS_CANCEL_GRACE_SECONDS of DURABLE_ENV
POOL_SIZE = 2  # the concurrency start_worker gives the durable pool
SKIPPED = "skipped: not pending"  # what a job that found its run not pending returns


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"c-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def live(
    durable_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog
) -> Iterator[Live]:
    with live_services(durable_pool.settings, pg_engine, event_log) as services:
        yield services


@pytest.fixture
def counters(redis_url: str) -> Iterator[Callable[[], str]]:
    """Fresh Redis counter keys (config "counter"), deleted afterwards."""
    keys: list[str] = []

    def new_key() -> str:
        keys.append(own("runs-test-counter"))
        return keys[-1]

    yield new_key
    if keys:
        client = redis.Redis.from_url(redis_url)
        client.delete(*keys)
        client.close()


def count(redis_url: str, key: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        value = client.get(key)
    finally:
        client.close()
    return int(value) if value is not None else 0


# -- the pool's processes ------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    """Live (non-zombie) child processes of ``pid``, from /proc/*/stat."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state not in ("Z", "X"):
            found.add(int(entry.name))
    return found


def settled_children(pool: WorkerPool, timeout: float = 15) -> set[int]:
    """The pool's processes once it has all of them (after a kill, the pool replaces one)."""
    deadline = time.monotonic() + timeout
    children = children_of(pool.process.pid)
    while time.monotonic() < deadline:
        children = children_of(pool.process.pid)
        if len(children) == POOL_SIZE:
            return children
        time.sleep(0.05)
    raise AssertionError(f"the pool has processes {children}, not {POOL_SIZE}:\n{pool.log()}")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not {what} after {timeout} s")


def skips(pool: WorkerPool) -> int:
    """How many jobs of the pool found their run not pending and did nothing."""
    return pool.log().count(SKIPPED)


# -- runs ----------------------------------------------------------------------------------


def complete(live: Live, project: Project, target: str, config: dict[str, object]) -> Run:
    """Submit a run and wait until it completed."""
    run, _ = live.runs.create(project, task_request(project, target, config=config))
    done = live.wait_terminal(project, run.run_id, 20)
    assert done.status is RunStatus.COMPLETED, done
    return done


def run_pids(live: Live, project: Project, n: int) -> list[int]:
    """Submit ``n`` durable/pid runs at once, wait for them, and return the pids that ran them."""
    submitted = [
        live.runs.create(project, task_request(project, "task:durable/pid", config={}))[0]
        for _ in range(n)
    ]
    pids = []
    for run in submitted:
        done = live.wait_terminal(project, run.run_id, 20)
        assert done.status is RunStatus.COMPLETED, done
        pids.append(int(done.output["pid"]))
    return pids


def cancel_running(live: Live, project: Project, target: str, config: dict[str, object]) -> Run:
    """Submit a run, cancel it once a worker runs it, and return the cancelled record."""
    run, _ = live.runs.create(project, task_request(project, target, config=config))
    live.wait_running(project, run.run_id, 20)
    cancelled, run_now = live.runs.cancel(project, run.run_id)
    assert cancelled is True
    assert run_now.status is RunStatus.CANCELLED
    assert run_now.cancel_requested_at is not None
    return run_now


def stopped(live: Live, project: Project, run_id: str, timeout: float) -> Run:
    return live.wait_for(project, run_id, lambda r: r.cancel_stopped_at is not None, timeout)


def stop_delay(run: Run) -> timedelta:
    assert run.cancel_requested_at is not None and run.cancel_stopped_at is not None
    return run.cancel_stopped_at - run.cancel_requested_at


def assert_utc(text: object, moment: datetime | None) -> None:
    """``text`` is the wire form of ``moment``: ISO 8601 in UTC, ending in "Z"."""
    assert isinstance(text, str) and text.endswith("Z"), text
    assert moment is not None and datetime.fromisoformat(text) == moment


def assert_cancelled_record(run: Run) -> None:
    assert run.status is RunStatus.CANCELLED
    assert run.output is None
    assert run.error is not None and run.error.code == "cancelled"
    assert all(a.status is not RunStatus.COMPLETED for a in run.attempts), run.attempts


# -- tests ---------------------------------------------------------------------------------


def test_cancel_stops_a_tight_cpu_loop_that_never_checks_the_flag_and_the_worker_keeps_serving(
    durable_pool: WorkerPool, live: Live, project: Project
) -> None:
    before = settled_children(durable_pool)

    cancelled = cancel_running(live, project, "task:durable/spin", {})
    assert cancelled.cancel_stopped_at is None  # the work has not stopped yet

    run = stopped(live, project, cancelled.run_id, 10)
    delay = stop_delay(run).total_seconds()
    assert 0.5 <= delay <= 4 * GRACE, f"stopped {delay:.2f} s after the cancel"
    assert_cancelled_record(run)
    assert live.event_types(project, run.run_id)[-1] == RUN_ERROR

    assert durable_pool.process.poll() is None
    assert children_of(durable_pool.process.pid) == before  # interrupted, not killed
    for pid in run_pids(live, project, 2):
        assert pid in before


def test_the_wire_shows_when_a_cancel_was_requested_and_when_the_work_stopped(
    durable_pool: WorkerPool,
    live: Live,
    project: Project,
    postgres_url: str,
    redis_url: str,
    pg_engine: sa.Engine,
    event_log: RedisEventLog,
    counters: Callable[[], str],
) -> None:
    # A running run: the work stops after the request.
    cancelled = cancel_running(live, project, "task:durable/spin", {})
    spun = stopped(live, project, cancelled.run_id, 10)
    wire = RunOut.from_run(spun).model_dump(mode="json")["cancellation"]
    assert set(wire) == {"requested_at", "stopped_at"}
    assert_utc(wire["requested_at"], spun.cancel_requested_at)
    assert_utc(wire["stopped_at"], spun.cancel_stopped_at)

    # A run never cancelled.
    never = complete(live, project, "task:durable/pid", {})
    assert never.cancel_requested_at is None and never.cancel_stopped_at is None
    assert RunOut.from_run(never).model_dump(mode="json")["cancellation"] is None

    # A pending run nobody took (its queue has no consumer): it stopped when it was cancelled.
    key = counters()
    idle = durable_settings(postgres_url, redis_url)  # a fresh queue name
    try:
        with live_services(idle, pg_engine, event_log) as nobody:
            request = task_request(project, "task:durable/pid", config={"counter": key})
            pending, _ = nobody.runs.create(project, request)
            assert pending.status is RunStatus.PENDING
            was_cancelled, run = nobody.runs.cancel(project, pending.run_id)
            assert was_cancelled is True
            assert run.cancel_requested_at is not None
            assert run.cancel_stopped_at == run.cancel_requested_at
            wire = RunOut.from_run(run).model_dump(mode="json")["cancellation"]
            assert wire["stopped_at"] == wire["requested_at"]
            assert_utc(wire["stopped_at"], run.cancel_stopped_at)

            # Its job reaches a worker after all: the worker does not run it.
            skipped = skips(durable_pool)
            queue = durable_pool.settings.default_queue
            nobody.dispatcher.dispatch("task:durable/pid", pending.ref, queue)
            wait_until(lambda: skips(durable_pool) > skipped, 10, "skipped by the worker")
            time.sleep(1.5)
    finally:
        client = redis.Redis.from_url(redis_url)
        client.delete(idle.default_queue, f"_kombu.binding.{idle.default_queue}")
        client.close()
    assert count(redis_url, key) == 0
    after = live.runs.get(project, pending.run_id)
    assert after == run
    assert after.started_at is None and after.attempt == 0
    assert RUN_STARTED not in live.event_types(project, pending.run_id)


def test_a_task_that_ignores_even_the_interrupt_is_stopped_by_killing_its_pool_process(
    durable_pool: WorkerPool, live: Live, project: Project
) -> None:
    before = settled_children(durable_pool)
    kills = durable_pool.log().count("killing its pool process")

    cancelled = cancel_running(live, project, "task:durable/immortal", {})
    run = stopped(live, project, cancelled.run_id, 10)
    delay = stop_delay(run).total_seconds()
    assert delay < 6 * GRACE, f"stopped {delay:.2f} s after the cancel"
    assert_cancelled_record(run)
    assert live.event_types(project, run.run_id)[-1] == RUN_ERROR

    # The worker lives on; its pool replaced the process it killed.
    wait_until(lambda: len(children_of(durable_pool.process.pid) - before) >= 1, 15, "replaced")
    after = settled_children(durable_pool)
    assert durable_pool.process.poll() is None
    assert before - after, "no pool process was killed"
    assert after - before, "the pool did not replace the killed process"
    assert durable_pool.log().count("killing its pool process") == kills + 1
    assert set(run_pids(live, project, 1)) <= after
    assert live.runs.get(project, run.run_id) == run


def test_a_late_result_does_not_overwrite_cancelled(
    live: Live, project: Project, redis_url: str, counters: Callable[[], str]
) -> None:
    key = counters()
    config: dict[str, object] = {"seconds": 0.6, "counter": key}
    cancelled = cancel_running(live, project, "task:durable/blind-sleep", config)

    time.sleep(2)  # the sleep ends (before the grace) and the worker tries to record its result
    run = live.runs.get(project, cancelled.run_id)
    assert_cancelled_record(run)
    assert run.cancel_stopped_at is not None
    assert stop_delay(run) >= timedelta(0)
    assert count(redis_url, key) == 1  # it ran, once, and was not retried
    events = live.event_types(project, run.run_id)
    assert RUN_FINISHED not in events
    assert events[-1] == RUN_ERROR and events.count(RUN_ERROR) == 1


def test_the_same_message_delivered_twice_runs_once(
    durable_pool: WorkerPool,
    live: Live,
    project: Project,
    redis_url: str,
    counters: Callable[[], str],
) -> None:
    key = counters()
    queue = durable_pool.settings.default_queue
    skipped = skips(durable_pool)
    request = task_request(project, "task:durable/pid", config={"counter": key, "seconds": 0.5})
    run, _ = live.runs.create(project, request)
    live.dispatcher.dispatch("task:durable/pid", run.ref, queue)

    done = live.wait_terminal(project, run.run_id, 20)
    assert done.status is RunStatus.COMPLETED, done
    wait_until(lambda: skips(durable_pool) > skipped, 10, "the duplicate skipped")
    time.sleep(1)
    assert count(redis_url, key) == 1
    final = live.runs.get(project, run.run_id)
    assert final.attempt == 1
    assert [a.status for a in final.attempts] == [RunStatus.COMPLETED.value]
    assert live.event_types(project, run.run_id).count(RUN_STARTED) == 1

    # Delivered once more, to a run already ended: nothing happens.
    skipped = skips(durable_pool)
    live.dispatcher.dispatch("task:durable/pid", run.ref, queue)
    wait_until(lambda: skips(durable_pool) > skipped, 10, "the late delivery skipped")
    time.sleep(0.5)
    assert count(redis_url, key) == 1
    assert live.runs.get(project, run.run_id) == final
    assert live.event_types(project, run.run_id).count(RUN_STARTED) == 1
