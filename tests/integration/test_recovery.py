"""Attempts of task runs at the service level, on SQLite and PostgreSQL and the real Redis:
lease renewal, retries, stop records, and the sweeper's recoveries (reclaim lost attempts,
expire runs that waited too long), each a conditional statement that races safely.

Time passes the way it does in ``test_sweeper``: every service gets a clock fixed at an
instant of the test, so a later instant is a sweeper that looks at the runs from the future.
The tables are shared by the session, so sweeps see other tests' runs too: assertions only
look at the runs a test created, and leases and delays are long enough that a real worker's
sweeper (on the real clock) never reaches them during a test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from runs.domain.clock import utcnow
from runs.domain.errors import InvalidRequest
from runs.domain.events import (
    RUN_ERROR,
    RUN_FINISHED,
    RUN_STARTED,
    STEP_FINISHED,
    STEP_STARTED,
    RunEvent,
    attempt_started_event,
    log_event,
    started_events,
)
from runs.domain.projects import Project
from runs.domain.runs import (
    AttemptRecord,
    ErrorCode,
    Lease,
    Outcome,
    Run,
    RunError,
    RunRef,
    RunStatus,
)
from runs.messaging.routing import Router
from runs.persistence import event_archive, recovery
from runs.persistence.tables import runs as runs_table
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.recovery import WORKER_LOST, RecoveryService
from runs.services.runs import RunService
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from tests.conftest import base_settings
from tests.support.helpers import task_request
from tests.support.redis_hygiene import QUEUE

NO_LIMIT = 100_000  # sweeps look at every run of the session, not only this test's


@dataclass
class TimedDispatcher(RecordingDispatcher):
    """Records the countdown of each job as well: (run, countdown)."""

    countdowns: list[tuple[RunRef, float | None]] = field(default_factory=list)

    def dispatch(
        self,
        target: str,
        ref: RunRef,
        queue: str,
        *,
        node_id: str | None = None,
        countdown: float | None = None,
        attempt: int | None = None,
    ) -> None:
        super().dispatch(target, ref, queue, node_id=node_id, countdown=countdown, attempt=attempt)
        self.countdowns.append((ref, countdown))


def runs_at(
    engine: sa.Engine,
    events: RedisEventLog,
    dispatcher: RecordingDispatcher,
    at: datetime,
    *,
    max_timeout_seconds: int | None = None,
) -> RunService:
    """A run service whose clock stands still at ``at``."""
    return RunService(
        engine,
        dispatcher=dispatcher,
        events=events,
        router=Router([], QUEUE),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
        max_timeout_seconds=max_timeout_seconds,
        clock=lambda: at,
    )


def attempts_at(
    engine: sa.Engine, events: RedisEventLog, dispatcher: RecordingDispatcher, at: datetime
) -> AttemptService:
    """An attempt service (a worker's side or a sweeper) whose clock stands still at ``at``."""
    return AttemptService(engine, dispatcher=dispatcher, events=events, clock=lambda: at)


def sweeper_at(
    engine: sa.Engine, events: RedisEventLog, dispatcher: RecordingDispatcher, at: datetime
) -> RecoveryService:
    """A sweeper whose clock stands still at ``at``."""
    attempts = attempts_at(engine, events, dispatcher, at)
    return RecoveryService(
        engine, attempts=attempts, dispatcher=dispatcher, events=events, clock=lambda: at
    )


def later(moment: datetime, seconds: float) -> datetime:
    return moment + timedelta(seconds=seconds)


def claimed_run(
    runs: RunService, worker: AttemptService, project: Project, *, lease_seconds: float
) -> Run:
    """A new task run, taken by a worker for attempt 1, that has emitted its opening events."""
    run, _ = runs.create(project, task_request(project))
    claimed = worker.claim(run.ref, owner="w1", lease_seconds=lease_seconds)
    assert claimed is not None and claimed.attempt == 1
    assert worker.emit(run.ref, started_events(run.target))
    return claimed


def lease_of(engine: sa.Engine, ref: RunRef) -> tuple[str | None, datetime | None]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(runs_table.c.lease_owner, runs_table.c.lease_expires_at).where(
                event_archive.of_run(runs_table, ref)
            )
        ).one()
    return row.lease_owner, row.lease_expires_at


def load(service: RunService, ref: RunRef) -> Run:
    found = service.load(ref)
    assert found is not None
    return found


def event_types(service: RunService, project: Project, run_id: str) -> list[str]:
    return [e.event_type for e in service.events(project, run_id, after=0, limit=100).items]


def sql_events(engine: sa.Engine, ref: RunRef) -> list[RunEvent]:
    with engine.connect() as conn:
        return event_archive.list_events(conn, ref, after=0, limit=100)


def comparable(events: list[RunEvent]) -> list[tuple[int, str, Any]]:
    """Events without their timestamps (Redis keeps milliseconds, SQL microseconds)."""
    return [(e.event_id, e.event_type, e.payload) for e in events]


def failed(message: str = "boom") -> Outcome:
    return Outcome(RunStatus.FAILED, error=RunError(message, code="task_error"), exit_code=1)


# -- renewing a lease ----------------------------------------------------------------------


def test_renew_extends_the_lease_of_the_running_attempt_and_not_of_a_stale_one(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=30)
    assert lease_of(engine, claimed.ref) == ("w1", later(t0, 30))
    worker = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 10))

    assert worker.renew(claimed, 60) is Lease.HELD
    assert lease_of(engine, claimed.ref) == ("w1", later(t0, 70))

    assert worker.renew(replace(claimed, attempt=2), 600) is Lease.LOST
    assert lease_of(engine, claimed.ref) == ("w1", later(t0, 70))


def test_a_cancelled_attempt_holds_its_lease_until_it_says_its_work_stopped(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=30)
    cancelled, _ = runs.cancel(project, claimed.run_id)
    assert cancelled
    worker = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 20))

    # Still stopping: the lease goes on, so no sweeper notes a stop that has not happened.
    assert worker.renew(claimed, 60) is Lease.STOPPING
    assert lease_of(engine, claimed.ref) == ("w1", later(t0, 80))
    sweeper = sweeper_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 70))
    sweeper.record_lost_stops()
    assert load(runs, claimed.ref).cancel_stopped_at is None

    assert worker.record_stop(claimed)
    assert load(runs, claimed.ref).cancel_stopped_at == later(t0, 20)
    assert worker.renew(claimed, 600) is Lease.LOST
    assert lease_of(engine, claimed.ref) == (None, None)


# -- retrying ------------------------------------------------------------------------------


def test_retry_records_the_failed_attempt_and_queues_the_next_one_after_the_delay(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    failed_at = later(t0, 5)
    sender = TimedDispatcher(sent=[])
    worker = attempts_at(engine, event_log, sender, failed_at)

    assert worker.retry(claimed, failed("boom"), 45)

    after = load(runs, claimed.ref)
    assert after.status is RunStatus.PENDING and after.attempt == 1
    assert after.error is None and after.completed_at is None
    assert after.available_at == later(failed_at, 45)
    assert after.updated_at == failed_at
    assert after.attempts == (
        AttemptRecord(1, RunStatus.FAILED, RunError("boom", ErrorCode.TASK_ERROR), t0, failed_at),
    )
    assert lease_of(engine, claimed.ref) == (None, None)
    assert sender.sent == [(claimed.target, claimed.ref, claimed.queue)]
    assert sender.countdowns == [(claimed.ref, 45)]
    last = runs.events(project, claimed.run_id, after=0, limit=100).items[-1]
    assert last.event_type == STEP_FINISHED
    assert last.payload["retrying"] is True
    assert last.payload["attempt"] == 1 and last.payload["message"] == "boom"


def test_a_job_arriving_before_the_retry_backoff_is_over_does_not_start_the_next_attempt(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    worker = attempts_at(engine, event_log, TimedDispatcher(sent=[]), later(t0, 5))
    assert worker.retry(claimed, failed("boom"), 45)

    early = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 30))
    assert early.claim(claimed.ref, owner="w2", lease_seconds=60) is None
    assert load(runs, claimed.ref).status is RunStatus.PENDING
    due = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 50))
    second = due.claim(claimed.ref, owner="w2", lease_seconds=60)
    assert second is not None and second.attempt == 2


def test_retry_after_a_cancel_returns_false_and_changes_nothing(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    cancelled, _ = runs.cancel(project, claimed.run_id)
    assert cancelled
    before = load(runs, claimed.ref)
    stream_before = event_log.read(claimed.ref, after=0, limit=100)
    sender = TimedDispatcher(sent=[])

    assert not attempts_at(engine, event_log, sender, later(t0, 5)).retry(claimed, failed(), 10)

    assert load(runs, claimed.ref) == before
    assert before.status is RunStatus.CANCELLED and before.attempts == ()
    assert sender.sent == [] and sender.countdowns == []
    assert event_log.read(claimed.ref, after=0, limit=100) == stream_before
    assert event_types(runs, project, claimed.run_id)[-1] == RUN_ERROR


def test_a_run_waiting_out_a_retry_backoff_is_not_sent_again_by_the_pending_sweeper_before_it_is_due(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    assert attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0).retry(
        claimed, failed(), 60
    )

    # Not yet due (t0 + 30), and due but not yet past the threshold (t0 + 65 - 10 < t0 + 60).
    for ahead in (30, 65):
        early = RecordingDispatcher(sent=[])
        sweeper = sweeper_at(engine, event_log, early, later(t0, ahead))
        sweeper.redispatch_stale(older_than_seconds=10, limit=NO_LIMIT)
        assert claimed.ref not in {s[1] for s in early.sent}, ahead

    due = RecordingDispatcher(sent=[])
    sweeper = sweeper_at(engine, event_log, due, later(t0, 75))
    sweeper.redispatch_stale(older_than_seconds=10, limit=NO_LIMIT)
    sweeper.redispatch_stale(older_than_seconds=10, limit=NO_LIMIT)
    assert [s for s in due.sent if s[1] == claimed.ref] == [
        (claimed.target, claimed.ref, claimed.queue)
    ]
    assert load(runs, claimed.ref).status is RunStatus.PENDING


# -- reclaiming lost attempts --------------------------------------------------------------


def test_an_expired_lease_with_attempts_left_puts_the_run_back_to_pending_and_sends_it_again(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    asked: list[tuple[str, int]] = []

    def max_attempts(run: Run) -> int:
        asked.append((run.run_id, run.attempt))
        return 2

    sent = TimedDispatcher(sent=[])
    swept_at = later(t0, 120)
    sweeper = sweeper_at(engine, event_log, sent, swept_at)
    assert sweeper.reclaim_expired(max_attempts=max_attempts, backoff=lambda n: 7.0, limit=NO_LIMIT)

    assert (claimed.run_id, 1) in asked
    after = load(runs, claimed.ref)
    assert after.status is RunStatus.PENDING and after.attempt == 1 and after.error is None
    assert after.available_at == later(swept_at, 7)
    lost = RunError(WORKER_LOST, ErrorCode.WORKER_LOST)
    assert after.attempts == (AttemptRecord(1, RunStatus.FAILED, lost, t0, swept_at),)
    assert lease_of(engine, claimed.ref) == (None, None)
    assert [s for s in sent.sent if s[1] == claimed.ref] == [
        (claimed.target, claimed.ref, claimed.queue)
    ]
    assert [c for c in sent.countdowns if c[0] == claimed.ref] == [(claimed.ref, 7.0)]
    last = runs.events(project, claimed.run_id, after=0, limit=100).items[-1]
    assert last.event_type == STEP_FINISHED and last.payload["retrying"] is True
    assert last.payload["message"] == WORKER_LOST


def test_an_expired_lease_without_attempts_left_fails_the_run_as_worker_lost(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    sent = TimedDispatcher(sent=[])
    swept_at = later(t0, 120)
    sweeper = sweeper_at(engine, event_log, sent, swept_at)

    assert sweeper.reclaim_expired(
        max_attempts=lambda run: 1, backoff=lambda n: 0.0, limit=NO_LIMIT
    )

    after = load(runs, claimed.ref)
    assert after.status is RunStatus.FAILED
    assert after.error == RunError(WORKER_LOST, ErrorCode.WORKER_LOST)
    assert after.completed_at == swept_at and after.duration_ms == 120_000
    assert [a.attempt for a in after.attempts] == [1]
    assert after.attempts[0].error.code == "worker_lost"
    assert lease_of(engine, claimed.ref) == (None, None)
    assert claimed.ref not in {s[1] for s in sent.sent}

    archived = sql_events(engine, claimed.ref)
    assert [e.event_type for e in archived] == [RUN_STARTED, STEP_STARTED, STEP_FINISHED, RUN_ERROR]
    assert archived[2].payload["retrying"] is False
    assert comparable(event_log.read(claimed.ref, after=0, limit=100)) == comparable(archived)
    assert event_types(runs, project, claimed.run_id)[-1] == RUN_ERROR
    assert not attempts.emit(claimed.ref, [log_event("too late")])


def test_a_run_whose_lease_has_not_expired_is_not_reclaimed(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=600)
    before = load(runs, claimed.ref)
    asked: list[str] = []

    def max_attempts(run: Run) -> int:
        asked.append(run.run_id)
        return 1

    sent = TimedDispatcher(sent=[])
    sweeper = sweeper_at(engine, event_log, sent, later(t0, 120))
    sweeper.reclaim_expired(max_attempts=max_attempts, backoff=lambda n: 0.0, limit=NO_LIMIT)

    assert claimed.run_id not in asked
    assert load(runs, claimed.ref) == before
    assert lease_of(engine, claimed.ref) == ("w1", later(t0, 600))
    assert claimed.ref not in {s[1] for s in sent.sent}
    assert attempts.emit(claimed.ref, [log_event("still mine")])


@pytest.mark.parametrize("allowed", [1, 2], ids=["last-attempt", "attempts-left"])
def test_a_worker_that_renews_after_the_sweeper_read_its_lease_as_expired_keeps_its_run(
    engine: sa.Engine, event_log: RedisEventLog, project: Project, allowed: int
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    worker = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 119))
    renewed: list[Lease] = []

    def max_attempts(run: Run) -> int:
        # Called after the sweeper read the run as lost and before it writes.
        if run.run_id == claimed.run_id:
            renewed.append(worker.renew(claimed, 600))
        return allowed

    sent = TimedDispatcher(sent=[])
    sweeper = sweeper_at(engine, event_log, sent, later(t0, 120))
    sweeper.reclaim_expired(max_attempts=max_attempts, backoff=lambda n: 0.0, limit=NO_LIMIT)

    assert renewed == [Lease.HELD]
    after = load(runs, claimed.ref)
    assert after.status is RunStatus.RUNNING and after.attempt == 1
    assert after.attempts == () and after.error is None
    assert lease_of(engine, claimed.ref) == ("w1", later(t0, 719))
    assert claimed.ref not in {s[1] for s in sent.sent}
    assert attempts.emit(claimed.ref, [log_event("still mine")])
    assert STEP_FINISHED not in event_types(runs, project, claimed.run_id)


def test_two_racing_sweepers_reclaim_a_lost_attempt_once(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    # Both sweepers have read the run as lost before either writes: the race proper.
    both_read = threading.Barrier(2, timeout=20)

    def max_attempts(run: Run) -> int:
        if run.run_id == claimed.run_id:
            both_read.wait()
        return 2

    first, second = TimedDispatcher(sent=[]), TimedDispatcher(sent=[])
    sweepers = [sweeper_at(engine, event_log, d, later(t0, 120)) for d in (first, second)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        sweeps = [
            pool.submit(
                s.reclaim_expired, max_attempts=max_attempts, backoff=lambda n: 5.0, limit=NO_LIMIT
            )
            for s in sweepers
        ]
        for sweep in sweeps:
            sweep.result(timeout=60)

    sent = [s for s in first.sent + second.sent if s[1] == claimed.ref]
    assert sent == [(claimed.target, claimed.ref, claimed.queue)]
    after = load(runs, claimed.ref)
    assert after.status is RunStatus.PENDING
    assert [a.attempt for a in after.attempts] == [1]
    retrying = [
        e
        for e in runs.events(project, claimed.run_id, after=0, limit=100).items
        if e.event_type == STEP_FINISHED
    ]
    assert len(retrying) == 1


# -- stop records --------------------------------------------------------------------------


def test_record_stop_notes_the_stop_only_for_the_cancelled_attempt_it_names_and_only_once(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    worker = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 5))
    assert not worker.record_stop(claimed)  # still running: nothing to note

    cancelled, run = runs.cancel(project, claimed.run_id)
    assert cancelled and run.cancel_requested_at == t0 and run.cancel_stopped_at is None
    assert lease_of(engine, claimed.ref) == ("w1", later(t0, 60))

    assert not worker.record_stop(replace(claimed, attempt=2))
    assert load(runs, claimed.ref).cancel_stopped_at is None

    assert worker.record_stop(claimed)
    assert load(runs, claimed.ref).cancel_stopped_at == later(t0, 5)
    assert lease_of(engine, claimed.ref) == (None, None)

    again = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 9))
    assert not again.record_stop(claimed)
    assert load(runs, claimed.ref).cancel_stopped_at == later(t0, 5)


def test_a_cancelled_attempt_whose_worker_never_confirmed_stopped_when_its_lease_ended(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    lost = claimed_run(runs, attempts, project, lease_seconds=60)
    live = claimed_run(runs, attempts, project, lease_seconds=600)
    for run in (lost, live):
        cancelled, _ = runs.cancel(project, run.run_id)
        assert cancelled

    sweeper = sweeper_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 120))
    assert sweeper.record_lost_stops() >= 1

    assert load(runs, lost.ref).cancel_stopped_at == later(t0, 60)
    assert lease_of(engine, lost.ref) == (None, None)
    assert load(runs, live.ref).cancel_stopped_at is None
    assert lease_of(engine, live.ref) == ("w1", later(t0, 600))


def test_a_cancelled_pending_run_stopped_when_the_cancel_was_requested(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    run, _ = runs.create(project, task_request(project))
    cancelled, after = runs.cancel(project, run.run_id)
    assert cancelled
    assert after.cancel_requested_at == t0 and after.cancel_stopped_at == t0
    stored = load(runs, run.ref)
    assert stored.cancel_stopped_at == stored.cancel_requested_at == t0


# -- expiring runs that waited too long ----------------------------------------------------


def test_expire_stale_fails_pending_runs_older_than_the_ttl_and_leaves_the_rest_alone(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    old, _ = runs.create(project, task_request(project))
    running = claimed_run(runs, attempts, project, lease_seconds=600)
    young_runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 100))
    young, _ = young_runs.create(project, task_request(project))
    running_before, young_before = load(runs, running.ref), load(runs, young.ref)

    swept_at = later(t0, 120)
    sweeper = sweeper_at(engine, event_log, RecordingDispatcher(sent=[]), swept_at)
    assert sweeper.expire_stale(ttl_seconds=60, limit=NO_LIMIT) >= 1

    expired = load(runs, old.ref)
    assert expired.status is RunStatus.FAILED and expired.completed_at == swept_at
    assert expired.error is not None and expired.error.code == "expired"
    assert "60" in expired.error.message
    assert [e.event_type for e in sql_events(engine, old.ref)] == [RUN_ERROR]
    assert event_types(runs, project, old.run_id)[-1] == RUN_ERROR
    assert event_log.read(old.ref, after=0, limit=100)[-1].event_type == RUN_ERROR
    assert attempts.claim(old.ref, owner="late", lease_seconds=60) is None

    assert load(runs, young.ref) == young_before
    assert load(runs, running.ref) == running_before
    assert attempts.emit(running.ref, [log_event("still running")])


def test_expire_stale_does_not_touch_a_run_claimed_after_it_was_read_as_stale(
    engine: sa.Engine,
    event_log: RedisEventLog,
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    run, _ = runs.create(project, task_request(project))
    worker = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 119))
    read = recovery.expirable
    seen: list[str] = []
    claims: list[Run | None] = []

    def read_then_claim(conn: sa.Connection, available_before: datetime, limit: int) -> list[Run]:
        stale = read(conn, available_before, limit)
        seen.extend(r.run_id for r in stale)
        claims.append(worker.claim(run.ref, owner="w2", lease_seconds=600))
        return stale

    monkeypatch.setattr(recovery, "expirable", read_then_claim)
    sweeper = sweeper_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 120))
    sweeper.expire_stale(ttl_seconds=60, limit=NO_LIMIT)

    assert run.run_id in seen
    assert len(claims) == 1 and claims[0] is not None
    after = load(runs, run.ref)
    assert after.status is RunStatus.RUNNING and after.attempt == 1
    assert after.error is None and after.completed_at is None
    assert sql_events(engine, run.ref) == []
    assert attempts.emit(run.ref, started_events(run.target))


# -- the event stream of a later attempt ---------------------------------------------------


def test_claiming_attempt_two_reopens_a_stream_an_earlier_attempt_closed_without_finishing(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    # Attempt 1 reserved the ids of its final events, then died before its record landed.
    assert event_log.close_attempt(claimed.ref, "w1", 2) is not None
    assert not attempts.emit(claimed.ref, [log_event("closed")])
    swept_at = later(t0, 120)
    sweeper = sweeper_at(engine, event_log, RecordingDispatcher(sent=[]), swept_at)
    assert sweeper.reclaim_expired(
        max_attempts=lambda run: 2, backoff=lambda n: 0.0, limit=NO_LIMIT
    )

    second_worker = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(swept_at, 1))
    second = second_worker.claim(claimed.ref, owner="w2", lease_seconds=60)
    assert second is not None and second.attempt == 2
    assert second_worker.open_attempt(second, [attempt_started_event(second.target, 2)], owner="w2")
    assert second_worker.finish(
        second, Outcome(RunStatus.COMPLETED, output={"ok": True}), owner="w2"
    )

    done = load(runs, claimed.ref)
    assert done.status is RunStatus.COMPLETED and done.output == {"ok": True}
    assert [a.attempt for a in done.attempts] == [1, 2]
    archived = sql_events(engine, claimed.ref)
    ids = [e.event_id for e in archived]
    assert ids == sorted(set(ids))
    assert [(e.event_type, e.payload.get("attempt")) for e in archived] == [
        (RUN_STARTED, None),
        (STEP_STARTED, None),
        (STEP_STARTED, 2),
        (STEP_FINISHED, None),
        (RUN_FINISHED, None),
    ]


def test_a_reclaimed_attempt_reporting_late_leaves_the_stream_of_the_next_attempt_open(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    first = claimed_run(runs, attempts, project, lease_seconds=60)
    sweeper = sweeper_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 120))
    assert sweeper.reclaim_expired(
        max_attempts=lambda run: 2, backoff=lambda n: 0.0, limit=NO_LIMIT
    )
    worker = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 121))
    second = worker.claim(first.ref, owner="w2", lease_seconds=60)
    assert second is not None and second.attempt == 2
    assert worker.open_attempt(second, [attempt_started_event(second.target, 2)], owner="w2")

    # The hung attempt 1 wakes up and reports: it no longer owns the run, so nothing changes.
    assert not attempts.finish(
        first, Outcome(RunStatus.COMPLETED, output={"stale": True}), owner="w1"
    )

    assert worker.emit(first.ref, [log_event("attempt 2 still working")])


class ClaimDuringCancel(RedisEventLog):
    """The event log of a cancel that a worker's claim overtakes: the claim lands after the
    cancel raised its flag in Redis and before the cancel's SQL update."""

    def __init__(self, log: RedisEventLog, claim: Callable[[], Run | None]) -> None:
        super().__init__(log.client, ttl_seconds=3600)
        self._claim = claim
        self.claimed: list[Run | None] = []

    def close(self, ref: RunRef, count: int, *, cancel: bool = False) -> tuple[int, list[RunEvent]]:
        closed = super().close(ref, count, cancel=cancel)
        if cancel:
            self.claimed.append(self._claim())
        return closed


def test_claiming_attempt_two_does_not_reopen_the_stream_of_a_run_being_cancelled(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    t0 = utcnow()
    runs = runs_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    attempts = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0)
    claimed = claimed_run(runs, attempts, project, lease_seconds=60)
    assert attempts_at(engine, event_log, RecordingDispatcher(sent=[]), t0).retry(
        claimed, failed(), 0
    )
    worker = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 1))
    racing = ClaimDuringCancel(
        event_log, lambda: worker.claim(claimed.ref, owner="w2", lease_seconds=60)
    )
    canceller = runs_at(engine, racing, RecordingDispatcher(sent=[]), later(t0, 2))

    cancelled, after = canceller.cancel(project, claimed.run_id)

    assert cancelled and after.status is RunStatus.CANCELLED
    assert len(racing.claimed) == 1
    second = racing.claimed[0]
    assert second is not None and second.attempt == 2
    assert not worker.open_attempt(second, [attempt_started_event(second.target, 2)], owner="w2")
    assert not worker.finish(
        second, Outcome(RunStatus.COMPLETED, output={"late": True}), owner="w2"
    )
    stopper = attempts_at(engine, event_log, RecordingDispatcher(sent=[]), later(t0, 3))
    assert stopper.record_stop(second)
    final = load(runs, claimed.ref)
    assert final.status is RunStatus.CANCELLED and final.output is None
    assert final.cancel_stopped_at == later(t0, 3)
    types = event_types(runs, project, claimed.run_id)
    assert types[-1] == RUN_ERROR and types.count(STEP_STARTED) == 1


# -- limits --------------------------------------------------------------------------------


def test_submit_refuses_a_timeout_above_the_servers_maximum_and_stores_nothing(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    sender = RecordingDispatcher(sent=[])
    runs = runs_at(engine, event_log, sender, utcnow(), max_timeout_seconds=60)
    with pytest.raises(InvalidRequest) as refused:
        runs.create(project, task_request(project, timeout_seconds=61))
    assert refused.value.field == "request.timeout_seconds"
    assert "60" in refused.value.detail
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).where(runs_table.c.project_id == project.id)
        ).scalar_one()
    assert count == 0 and sender.sent == []

    accepted, _ = runs.create(project, task_request(project, timeout_seconds=60))
    assert accepted.timeout_seconds == 60


def test_settings_refuse_a_broker_visibility_timeout_not_above_the_longest_run() -> None:
    longest = {"max_timeout_seconds": 100, "cancel_grace_seconds": 10}
    with pytest.raises(ValidationError, match="broker_visibility_timeout_seconds"):
        base_settings(broker_visibility_timeout_seconds=120, **longest)
    with pytest.raises(ValidationError):
        base_settings(broker_visibility_timeout_seconds=90, **longest)
    assert base_settings(broker_visibility_timeout_seconds=121, **longest)
