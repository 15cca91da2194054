"""Use cases that keep runs moving when their job was lost or their worker died: the sweeper's
side. Every change is a conditional statement, so several sweepers (one in each worker) can run
at once; each owns its transactions and talks to Redis and Celery only through the ports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa

from runs.domain import events as ev
from runs.domain.clock import utcnow
from runs.domain.events import NewEvent
from runs.domain.runs import (
    ErrorCode,
    Run,
    RunError,
    RunRef,
    RunStatus,
    attempt_record,
    attempts_to_json,
    duration_ms,
)
from runs.observability import metrics
from runs.persistence import event_archive, nodes, recovery
from runs.persistence.engine import autocommit
from runs.services.attempts import AttemptService
from runs.services.ports import Dispatcher, EventLog

log = logging.getLogger(__name__)

WORKER_LOST = "the worker running this attempt stopped renewing its lease (it died or hung)"


class RecoveryService:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        attempts: AttemptService,
        dispatcher: Dispatcher,
        events: EventLog,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._auto = autocommit(engine)
        self._attempts = attempts
        self._dispatcher = dispatcher
        self._events = events
        self._clock = clock

    def database_round_trip(self) -> float:
        """Seconds one trivial statement takes (the sweeper's look at the database's health)."""
        started = time.monotonic()
        with self._auto.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return time.monotonic() - started

    def redispatch_stale(self, *, older_than_seconds: float, limit: int = 200) -> int:
        """Send the job again for runs left pending too long (the broker was down, or the
        message was lost). Safe in several places at once: a conditional touch picks one
        sender, and a duplicate job is dropped by the conditional claim anyway."""
        now = self._clock()
        before = now - timedelta(seconds=older_than_seconds)
        with self._auto.connect() as conn:
            stale = recovery.stale_pending(conn, before, limit)
        sent = 0
        for ref, target, queue, attempt in stale:
            with self._auto.connect() as conn:
                if not recovery.touch_pending(conn, ref, before, now):
                    continue
            try:
                self._dispatcher.dispatch(target, ref, queue, attempt=attempt + 1)
            except Exception:
                log.warning("re-dispatch of %s failed; next sweep tries again", ref)
                continue
            sent += 1
        return sent

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
                if self._attempts.requeue_lapsed(run, error, delay, now):
                    metrics.lease_reclaimed(run.target)
                    reclaimed += 1
                continue
            closing = [
                ev.attempt_failed_event(run.target, run.attempt, error.message, retrying=False),
                ev.terminal_event(RunStatus.FAILED.value, error.message),
            ]
            ran_ms = duration_ms(run.started_at or now, now)
            values = {
                "status": RunStatus.FAILED.value,
                "output": None,
                "error": error.to_json(),
                "logs": run.logs,
                "artifacts": run.artifacts,
                "exit_code": None,
                "duration_ms": ran_ms,
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
                metrics.lease_reclaimed(run.target)
                metrics.run_finished(run.target, run.kind.value, RunStatus.FAILED.value, ran_ms)
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
                metrics.run_finished(run.target, run.kind.value, RunStatus.FAILED.value, None)
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

    def redispatch_stale_steps(
        self, *, older_than_seconds: float, lapsed: bool = True, limit: int = 200
    ) -> int:
        """Re-send the jobs of nodes queued too long (a job lost between the node's move to
        ``queued`` and its send) and, with ``lapsed``, of running nodes whose worker's lease
        ran out (the job then takes the node over). A duplicate is dropped by the conditional
        node claim."""
        now = self._clock()
        before = now - timedelta(seconds=older_than_seconds)
        lapsed_before = now if lapsed else None
        with self._auto.connect() as conn:
            stale = nodes.stale_nodes(conn, before, lapsed_before, limit)
        sent = 0
        for ref, node_id, target, queue in stale:
            with self._auto.connect() as conn:
                if not nodes.touch_stale(conn, ref, node_id, before, lapsed_before, now):
                    continue
            self._dispatcher.dispatch(target, ref, queue, node_id=node_id)
            sent += 1
        return sent
