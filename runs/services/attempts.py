"""Use cases of a run's attempts, the worker's side.

The rule: ``runs.services.runs`` answers what API callers ask of runs (create, get, list,
events, cancel); this module moves runs through their attempts: a worker claims a run, opens
the attempt, emits events, renews its lease, and finishes or retries. What keeps runs moving
when their worker died or their job was lost is ``runs.services.recovery``.

Like ``service``, it owns its transactions and never imports FastAPI, Celery or redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from runs.domain import events as ev
from runs.domain.clock import utcnow
from runs.domain.events import NewEvent
from runs.domain.runs import (
    Lease,
    Outcome,
    Run,
    RunError,
    RunKind,
    RunRef,
    RunStatus,
    attempt_record,
    attempts_to_json,
    duration_ms,
)
from runs.observability import metrics
from runs.persistence import nodes, recovery, transitions
from runs.persistence.engine import autocommit
from runs.services.ports import Dispatcher, EventLog
from runs.services.transient import patiently

log = logging.getLogger(__name__)

T = TypeVar("T")


class AttemptService:
    """``patience``: how long each call of the worker's side keeps trying while storage is
    unreachable (``runs.services.transient.patiently``); 0 raises at once. Every such call is safe to
    repeat after its answer was lost: the retry completes the same change, never a second."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        dispatcher: Dispatcher,
        events: EventLog,
        clock: Callable[[], datetime] = utcnow,
        patience: float = 0.0,
    ) -> None:
        self._engine = engine
        self._auto = autocommit(engine)
        self._dispatcher = dispatcher
        self._events = events
        self._clock = clock
        self._patience = patience

    def _patiently(self, call: Callable[[], T]) -> T:
        return patiently(call, self._patience)

    def _marks(self, ref: RunRef) -> transitions.RunMarks | None:
        with self._auto.connect() as conn:
            return transitions.marks_of(conn, ref)

    # -- the worker's side ----------------------------------------------------------------

    def claim(self, ref: RunRef, *, owner: str, lease_seconds: float) -> Run | None:
        """Take a pending run for one attempt, its lease held by ``owner`` (a token unique to
        this claim). ``None``: it is not pending (drop the job).

        Lost answer: the claim that took effect is found by its owner and answered again, so
        the attempt goes on rather than leave a claimed run to lapse."""

        def claim_once() -> Run | None:
            now = self._clock()
            with self._auto.connect() as conn:
                run = transitions.claim_run(
                    conn,
                    ref,
                    worker=owner,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    now=now,
                )
                return run if run is not None else transitions.claimed_by(conn, ref, owner)

        run = self._patiently(claim_once)
        if run is not None and run.first_start and run.status is RunStatus.RUNNING:
            metrics.run_started(run.target, run.created_at, run.started_at)
        return run

    def open_attempt(self, run: Run, events: Sequence[NewEvent], *, owner: str) -> bool:
        """Emit a claimed attempt's opening events. False when the run was cancelled first.
        Lost answer: the retry finds the stream opened by ``owner`` and appends nothing."""
        return self._patiently(lambda: self._events.open(run.ref, owner, events))

    def emit(
        self,
        ref: RunRef,
        events: Sequence[NewEvent],
        *,
        producer: str = "",
        sequence: str = "",
    ) -> bool:
        """Append events of a running run. False once the run is closed (cancelled).

        Lost answer: a retry with the same ``producer`` and ``sequence`` appends nothing twice."""
        if not events:
            return True
        appended = self._patiently(
            lambda: self._events.append(ref, events, producer=producer, sequence=sequence)
        )
        return bool(appended)

    def finish(
        self,
        run: Run,
        outcome: Outcome,
        *,
        owner: str,
        ended_at: datetime | None = None,
        stop_work: bool = False,
    ) -> bool:
        """Write the terminal record in one transaction, then publish the final events.

        Task runs end with STEP_FINISHED then RUN_FINISHED/RUN_ERROR; workflow runs (whose steps
        report themselves) with the terminal event alone, and their nodes that have not ended
        end in the same transaction (cancelled, or skipped). ``stop_work`` raises the cancel flag
        for whatever of the run still executes. False when the attempt ``owner`` no longer owns
        the run (cancelled, or reclaimed): nothing changes.

        Each step (close, SQL write, publish) may fail half way or lose its answer: the retry
        with the same ``owner`` and ``ended_at`` finds the close it made (the same event ids),
        and a record written already (its ``completed_at`` is ``ended_at``), and completes the
        same outcome: same status and output, no event id skipped, the terminal event last.
        """
        closing, values = terminal_record(run, outcome, ended_at or self._clock())
        finished = self._patiently(
            lambda: self._finish_once(run, owner, closing, values, stop_work=stop_work)
        )
        if finished:
            metrics.run_finished(
                run.target, run.kind.value, values["status"], values["duration_ms"]
            )
        return finished

    def _finish_once(
        self,
        run: Run,
        owner: str,
        closing: Sequence[NewEvent],
        values: dict[str, Any],
        *,
        stop_work: bool,
    ) -> bool:
        # The stream is closed first, on behalf of this attempt: refused when a cancel or the
        # sweeper closed it, or a later attempt owns it. Then the conditional update and the
        # copy of the events, at once; the final events are published only after that commit.
        closed = self._events.close_attempt(run.ref, owner, len(closing), cancel=stop_work)
        if closed is None:
            if not self.recorded(run, values):
                return False
            # This attempt's record landed (its answer was lost) and a cancel closed the
            # stream since: the record stands; the events are in SQL.
            self._events.expire(run.ref)
            return True
        first, so_far = closed
        final = ev.numbered(closing, first, values["completed_at"])
        # One statement needs no transaction; a workflow also ends its nodes in the same one.
        single = run.kind is RunKind.TASK and transitions.finishes_in_one_statement(self._engine)
        with self._auto.connect() if single else self._engine.begin() as conn:
            done = transitions.finish_run(conn, run.ref, run.attempt, values, [*so_far, *final])
            if done and run.kind is RunKind.WORKFLOW:  # nothing of a finished run stays active
                nodes.cancel_active_nodes(conn, run.ref, values["completed_at"])
        if not done and not self.recorded(run, values):
            return False
        self._events.publish(run.ref, final)
        return True

    def recorded(self, run: Run, values: dict[str, Any]) -> bool:
        """Whether the run holds the terminal record ``values`` of its attempt already."""
        marks = self._marks(run.ref)
        return (
            marks is not None
            and marks.status.value == values["status"]
            and marks.attempt == run.attempt
            and marks.completed_at == values["completed_at"]
        )

    def renew(self, run: Run, lease_seconds: float) -> Lease:
        """Extend the lease of the attempt ``run.attempt`` (a repeat only extends it again)."""
        until = self._clock() + timedelta(seconds=lease_seconds)
        with self._auto.connect() as conn:
            status = recovery.renew_lease(conn, run.ref, run.attempt, until)
        if status is None:
            return Lease.LOST
        return Lease.HELD if status == RunStatus.RUNNING.value else Lease.STOPPING

    def retry(
        self, run: Run, outcome: Outcome, delay: float, *, ended_at: datetime | None = None
    ) -> bool:
        """Record the failed attempt and queue the next one ``delay`` seconds from now.

        False when the attempt no longer owns the run (it was cancelled meanwhile). Lost
        answer: the retry with the same ``ended_at`` finds the attempt recorded and goes on
        to send the next attempt's job."""
        error = outcome.error or RunError("attempt failed")
        now = ended_at or self._clock()
        return self._requeue(run, error, delay, now, lease_expired=False)

    def hand_back(self, run: Run, *, at: datetime | None = None) -> bool:
        """The attempt stopped unfinished because its worker is shutting down: the run goes
        back to pending at once (not when the lease lapses), the attempt is not counted against
        ``backoff_limit``, and the run's job is sent again. False when the attempt no longer
        owns the run. Lost answer: the retry with the same ``at`` finds the run handed back."""
        now = at or self._clock()

        def hand_back_once() -> bool:
            with self._auto.connect() as conn:
                if recovery.hand_back(conn, run.ref, run.attempt, now):
                    return True
                marks = transitions.marks_of(conn, run.ref)
            return (
                marks is not None
                and marks.status is RunStatus.PENDING
                and marks.attempt == run.attempt - 1
                and marks.updated_at == now
            )

        handed = self._patiently(hand_back_once)
        if handed:
            event = ev.attempt_handed_back_event(run.target, run.attempt)
            self._send_next(run, event, now, countdown=None, attempt=run.attempt)
        return handed

    def record_stop(self, run: Run) -> bool:
        """The attempt of a cancelled run has stopped working: note the time (once; a
        repeat changes nothing)."""

        def record_once() -> bool:
            with self._auto.connect() as conn:
                return recovery.record_stop(conn, run.ref, run.attempt, self._clock())

        return self._patiently(record_once)

    def requeue_lapsed(self, run: Run, error: RunError, delay: float, now: datetime) -> bool:
        """The sweeper's: the attempt whose lease ran out before ``now`` is recorded failed
        with ``error``, and the run's next attempt is queued ``delay`` seconds from now."""
        return self._requeue(run, error, delay, now, lease_expired=True)

    def _requeue(
        self, run: Run, error: RunError, delay: float, now: datetime, *, lease_expired: bool
    ) -> bool:
        """Record the ended attempt, put the run back to pending, and send its next job."""
        record = attempt_record(run, RunStatus.FAILED, error, now)

        def requeue_once() -> bool:
            with self._auto.connect() as conn:
                if recovery.requeue(
                    conn,
                    run.ref,
                    run.attempt,
                    attempts=(*run.attempts, record),
                    due=now + timedelta(seconds=delay),
                    now=now,
                    lease_expired_before=now if lease_expired else None,
                ):
                    return True
                if lease_expired:  # the sweeper's: a failed sweep is simply swept again
                    return False
                marks = transitions.marks_of(conn, run.ref)
            # The worker's requeue whose answer was lost: the attempt is recorded as it wrote it.
            return marks is not None and any(
                (a.attempt, a.finished_at) == (record.attempt, now)
                and a.error is not None
                and a.error.message == error.message
                for a in marks.attempts
            )

        queued = self._patiently(requeue_once)
        if queued:
            metrics.attempt_retried(run.target)
            event = ev.attempt_failed_event(run.target, run.attempt, error.message, retrying=True)
            self._send_next(run, event, now, countdown=delay or None, attempt=run.attempt + 1)
        return queued

    def _send_next(
        self, run: Run, event: NewEvent, now: datetime, *, countdown: float | None, attempt: int
    ) -> None:
        """After a run went back to pending: its event (once, however often this is tried)
        and the job of its next attempt; a failure leaves the job to the sweeper."""
        try:
            self._patiently(
                lambda: self._events.append(
                    run.ref,
                    [event],
                    producer=f"attempt-{run.attempt}",
                    sequence=f"{event.event_type}:{now.isoformat()}",
                )
            )
            self._dispatcher.dispatch(
                run.target, run.ref, run.queue, countdown=countdown, attempt=attempt
            )
        except Exception:
            log.warning("could not send the next attempt of %s; the sweeper will", run.ref)


def terminal_record(
    run: Run, outcome: Outcome, now: datetime
) -> tuple[list[NewEvent], dict[str, Any]]:
    """The final events of the run's attempt that ended with ``outcome`` at ``now``, and its
    terminal record (every field of ``transitions.FINISH_FIELDS``)."""
    status = outcome.status.value
    message = outcome.error.message if outcome.error else None
    closing = [ev.terminal_event(status, message)]
    if run.kind is RunKind.TASK:
        closing.insert(0, ev.step_finished_event(run.target, status))
    attempts = run.attempts
    if run.kind is RunKind.TASK:
        attempts = (*attempts, attempt_record(run, outcome.status, outcome.error, now))
    values = {
        "status": status,
        "output": outcome.output,
        "error": outcome.error.to_json() if outcome.error else None,
        "logs": outcome.logs,
        "artifacts": outcome.artifacts,
        "exit_code": outcome.exit_code,
        "duration_ms": duration_ms(run.started_at or now, now),
        "completed_at": now,
        "updated_at": now,
        "attempts": attempts_to_json(attempts),
    }
    return closing, values
