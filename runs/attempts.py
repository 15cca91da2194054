"""Use cases of task-run attempts: lease renewal, retry, stop records, and the sweeper's
recoveries (reclaim attempts whose worker died, expire runs that waited too long).

Like ``service``, it owns its transactions and never imports FastAPI, Celery or redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa

from runs.domain import events as ev
from runs.domain.clock import utcnow
from runs.domain.events import NewEvent
from runs.domain.runs import (
    ErrorCode,
    Lease,
    Outcome,
    Run,
    RunError,
    RunRef,
    RunStatus,
    attempt_record,
    attempts_to_json,
)
from runs.persistence import event_archive, recovery
from runs.persistence.engine import autocommit
from runs.ports import Dispatcher, EventLog
from runs.service import duration_ms

log = logging.getLogger(__name__)

WORKER_LOST = "the worker running this attempt stopped renewing its lease (it died or hung)"


class AttemptService:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        dispatcher: Dispatcher,
        events: EventLog,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._auto = autocommit(engine)
        self._dispatcher = dispatcher
        self._events = events
        self._clock = clock

    # -- the worker's side ----------------------------------------------------------------

    def renew(self, run: Run, lease_seconds: float) -> Lease:
        """Extend the lease of the attempt ``run.attempt``."""
        until = self._clock() + timedelta(seconds=lease_seconds)
        with self._auto.connect() as conn:
            status = recovery.renew_lease(conn, run.ref, run.attempt, until)
        if status is None:
            return Lease.LOST
        return Lease.HELD if status == RunStatus.RUNNING.value else Lease.STOPPING

    def retry(self, run: Run, outcome: Outcome, delay: float) -> bool:
        """Record the failed attempt and queue the next one ``delay`` seconds from now.

        False when the attempt no longer owns the run (it was cancelled meanwhile)."""
        error = outcome.error or RunError("attempt failed")
        return self._requeue(run, error, delay, self._clock(), lease_expired=False)

    def record_stop(self, run: Run) -> bool:
        """The attempt of a cancelled run has stopped working: note the time."""
        with self._auto.connect() as conn:
            return recovery.record_stop(conn, run.ref, run.attempt, self._clock())

    def _requeue(
        self, run: Run, error: RunError, delay: float, now: datetime, *, lease_expired: bool
    ) -> bool:
        """Record the ended attempt, put the run back to pending, and send its next job."""
        record = attempt_record(run, RunStatus.FAILED, error, now)
        with self._auto.connect() as conn:
            queued = recovery.requeue(
                conn,
                run.ref,
                run.attempt,
                attempts=(*run.attempts, record),
                due=now + timedelta(seconds=delay),
                now=now,
                lease_expired_before=now if lease_expired else None,
            )
        if queued:
            self._next_attempt(run, error.message, delay)
        return queued

    def _next_attempt(self, run: Run, message: str, delay: float) -> None:
        event = ev.attempt_failed_event(run.target, run.attempt, message, retrying=True)
        try:
            self._events.append(run.ref, [event])
            self._dispatcher.dispatch(run.target, run.ref, run.queue, countdown=delay or None)
        except Exception:
            log.warning("could not send the next attempt of %s; the sweeper will", run.ref)

    # -- the sweeper's side ---------------------------------------------------------------

    def reclaim_expired(
        self,
        *,
        max_attempts: Callable[[Run], int],
        backoff: Callable[[int], float],
        limit: int = 200,
    ) -> int:
        """Runs whose worker stopped renewing its lease: a new attempt when the run has one
        left, else ``failed`` with ``worker_lost``. Returns how many runs were reclaimed."""
        now = self._clock()
        with self._auto.connect() as conn:
            lost = recovery.expired_leases(conn, now, limit)
        reclaimed = 0
        for run in lost:
            error = RunError(WORKER_LOST, code=ErrorCode.WORKER_LOST)
            if run.attempt < max_attempts(run):
                delay = backoff(run.attempt)
                reclaimed += self._requeue(run, error, delay, now, lease_expired=True)
                continue
            closing = [
                ev.attempt_failed_event(run.target, run.attempt, error.message, retrying=False),
                ev.terminal_event(RunStatus.FAILED.value, error.message),
            ]
            values = {
                "status": RunStatus.FAILED.value,
                "output": None,
                "error": error.to_json(),
                "logs": run.logs,
                "artifacts": run.artifacts,
                "exit_code": None,
                "duration_ms": duration_ms(run.started_at or now, now),
                "completed_at": now,
                "updated_at": now,
                "attempts": attempts_to_json(
                    (*run.attempts, attempt_record(run, RunStatus.FAILED, error, now))
                ),
            }
            if self._end(
                run.ref,
                partial(
                    recovery.fail_lost,
                    ref=run.ref,
                    attempt=run.attempt,
                    lease_expired_before=now,
                    values=values,
                ),
                closing,
                now,
            ):
                reclaimed += 1
        return reclaimed

    def record_lost_stops(self) -> int:
        """Cancelled runs whose worker never confirmed the stop stopped when its lease ended."""
        with self._auto.connect() as conn:
            return recovery.record_lost_stops(conn, self._clock())

    def expire_stale(self, *, ttl_seconds: float, limit: int = 200) -> int:
        """Fail runs that waited longer than ``ttl_seconds`` for a worker (``expired``)."""
        now = self._clock()
        cutoff = now - timedelta(seconds=ttl_seconds)
        with self._auto.connect() as conn:
            stale = recovery.expirable(conn, cutoff, limit)
        expired = 0
        for run in stale:
            message = f"the run waited more than {ttl_seconds:g} s for a worker"
            error = RunError(message, code=ErrorCode.EXPIRED)
            values = {
                "status": RunStatus.FAILED.value,
                "error": error.to_json(),
                "completed_at": now,
                "updated_at": now,
            }
            closing = [ev.terminal_event(RunStatus.FAILED.value, message)]
            if self._end(
                run.ref,
                partial(recovery.expire, ref=run.ref, available_before=cutoff, values=values),
                closing,
                now,
            ):
                expired += 1
        return expired

    def _end(
        self,
        ref: RunRef,
        update: Callable[[sa.Connection], bool],
        closing: Sequence[NewEvent],
        now: datetime,
    ) -> bool:
        """End a run on the sweeper's behalf: the conditional update first, then the events,
        all in one transaction (a live worker that won the race keeps its stream open)."""
        with self._engine.begin() as conn:
            if not update(conn):
                return False
            first, so_far = self._events.close(ref, len(closing))
            final = ev.numbered(closing, first, now)
            event_archive.insert_events(conn, ref, [*so_far, *final])
        self._events.publish(ref, final)
        return True
