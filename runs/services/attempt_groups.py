"""Use cases of runs that travel together, the worker's side: a job of a group claims its runs
in one statement, finishes the attempts that ended together with one statement and two Redis
round trips, and hands the runs it will not start back in one statement.

Each does for many runs what ``runs.services.attempts`` does for one, with the same guarantees
run by run: a claim is made for an owner token and a retry finds it; a finish is the one
``AttemptService.finish`` makes (the stream closed on behalf of the attempt, the terminal
record committed, then the final events published, the terminal one last), and when storage
fails half way each run is finished again on its own, which completes the same outcome.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from runs.domain import events as ev
from runs.domain.clock import utcnow
from runs.domain.events import NewEvent, RunEvent
from runs.domain.runs import Outcome, Run, RunRef
from runs.observability import metrics
from runs.persistence import group_transitions as together
from runs.persistence.engine import autocommit
from runs.persistence.transitions import finishes_in_one_statement
from runs.services.attempts import AttemptService, terminal_record
from runs.services.creation import send_jobs
from runs.services.ports import Dispatcher, EventLog
from runs.services.transient import TRANSIENT_ERRORS, patiently

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ending:
    """An attempt of a group that ended: its run (as the attempt saw it, ``started_at`` and
    ``attempt_started_at`` its real start), the outcome, when it ended, and the attempt's
    events not sent yet when it has not opened the run's stream (else None)."""

    run: Run
    outcome: Outcome
    owner: str
    ended_at: datetime
    opening: Sequence[NewEvent] | None


class AttemptGroups:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        attempts: AttemptService,
        dispatcher: Dispatcher,
        events: EventLog,
        clock: Callable[[], datetime] = utcnow,
        patience: float = 0.0,
    ) -> None:
        self._engine = engine
        self._auto = autocommit(engine)
        self._attempts = attempts
        self._dispatcher = dispatcher
        self._events = events
        self._clock = clock
        self._patience = patience

    def claim(self, refs: Sequence[RunRef], *, owner: str, lease_seconds: float) -> list[Run]:
        """Take the pending runs of ``refs`` for one attempt each, their leases held by
        ``owner``, in one statement; the runs claimed, in order. Lost answer: the retry finds
        the runs this owner claimed."""

        def claim_once() -> list[Run]:
            now = self._clock()
            until = now + timedelta(seconds=lease_seconds)
            with self._auto.connect() as conn:
                runs = together.claim_runs(conn, refs, worker=owner, lease_until=until, now=now)
                return runs or together.claimed_by(conn, refs, owner)

        return patiently(claim_once, self._patience)

    def hand_off(self, runs: Sequence[Run], *, owner: str, jobs: int = 1) -> set[RunRef]:
        """Claimed runs whose attempts will not start here go back to pending (the attempts
        not counted) and are sent again, in ``jobs`` jobs of as many runs each as may be (a
        job each: none of them waits behind another again); the runs handed off.
        A run not handed off was cancelled meanwhile: its stop is recorded. Lost answer: the
        retry finds the runs left pending at this hand-off's time."""
        if not runs:
            return set()
        refs = [run.ref for run in runs]
        now = self._clock()

        def hand_off_once() -> set[RunRef]:
            with self._auto.connect() as conn:
                handed = together.hand_off_runs(conn, refs, owner=owner, now=now)
                return (
                    handed
                    if len(handed) == len(refs)
                    else handed | together.handed_off(conn, refs, now)
                )

        handed = patiently(hand_off_once, self._patience)
        for run in runs:
            if run.ref not in handed:
                self._attempts.record_stop(run)
        again = [(run.ref, run.attempt) for run in runs if run.ref in handed]
        if again:
            size = math.ceil(len(again) / max(1, min(jobs, len(again))))
            send_jobs(self._dispatcher, runs[0].target, runs[0].queue, again, size)
        return handed

    def finish(self, endings: Sequence[Ending]) -> list[bool]:
        """Write the terminal records of attempts that ended, as ``AttemptService.finish``
        does for each: one Redis round trip closes their streams (opening those not opened
        yet), one statement commits the records, one round trip publishes the final events.
        Each answer is False when the attempt no longer owned its run (nothing changed)."""
        records = [terminal_record(e.run, e.outcome, e.ended_at) for e in endings]
        try:
            finished = self._finish_together(endings, records)
        except TRANSIENT_ERRORS:
            log.warning("finishing %d runs together failed; each on its own", len(endings))
            return [self._finish_alone(e) for e in endings]
        for ending, ok, (_, values) in zip(endings, finished, records, strict=True):
            if ok:
                run = ending.run
                metrics.run_finished(
                    run.target, run.kind.value, values["status"], values["duration_ms"]
                )
        return finished

    def _finish_together(
        self, endings: Sequence[Ending], records: Sequence[tuple[list[NewEvent], dict[str, Any]]]
    ) -> list[bool]:
        closings = [
            (e.run.ref, e.owner, len(closing), e.opening)
            for e, (closing, _) in zip(endings, records, strict=True)
        ]
        reservations = self._events.close_attempts(closings)
        items: list[together.Finishing] = []
        finals: dict[RunRef, list[RunEvent]] = {}
        for ending, (closing, values), reserved in zip(endings, records, reservations, strict=True):
            if reserved is None:
                continue
            first, so_far = reserved
            run = ending.run
            final = ev.numbered(closing, first, values["completed_at"])
            finals[run.ref] = final
            starts = {"started_at": run.started_at, "attempt_started_at": run.attempt_started_at}
            items.append(
                together.Finishing(run.ref, run.attempt, values | starts, [*so_far, *final])
            )
        done: set[RunRef] = set()
        if items:
            single = finishes_in_one_statement(self._engine)
            with self._auto.connect() if single else self._engine.begin() as conn:
                done = together.finish_runs(conn, items)
        answers: list[bool] = []
        for ending, (_, values), reserved in zip(endings, records, reservations, strict=True):
            run = ending.run
            if run.ref in done:
                answers.append(True)
            elif self._attempts.recorded(run, values):  # its record landed in an earlier try
                answers.append(True)
                if reserved is None:
                    self._events.expire(run.ref)
                    finals.pop(run.ref, None)
            else:
                answers.append(False)
                finals.pop(run.ref, None)
        if finals:
            self._events.publish_many(list(finals.items()))
        return answers

    def _finish_alone(self, ending: Ending) -> bool:
        """One run's finish on its own, patiently: the retry of what the group's finish may
        have done half way (each step finds what it did and completes the same change)."""
        run = ending.run
        if ending.opening is not None:
            self._attempts.open_attempt(run, ending.opening, owner=ending.owner)
        return self._attempts.finish(
            run, ending.outcome, owner=ending.owner, ended_at=ending.ended_at
        )
