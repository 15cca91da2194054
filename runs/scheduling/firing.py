"""Firing due schedules, exactly once per occurrence, and keeping their last outcome.

Any number of schedulers may fire at once. A pass locks the due schedules it takes (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so schedulers share the work without waiting; SQLite: the write
lock, from the transaction's start), and in one transaction writes each occurrence's firing
(unique per schedule and time), its run (pending) and the schedule's next occurrence
(conditional on the one it read). A scheduler killed before the commit leaves nothing; after
it, the runs are pending and the workers' sweeper sends their jobs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.domain.errors import RunsError
from runs.domain.runs import Run, RunRef, RunStatus
from runs.domain.schedules import (
    Catchup,
    ConcurrencyPolicy,
    FiringOutcome,
    Schedule,
    ScheduleStatus,
)
from runs.persistence import schedules as store
from runs.scheduling.schedule_runs import recurrence_of, run_request
from runs.services.runs import RunService

log = logging.getLogger(__name__)


class _Raced(Exception):
    """A schedule moved on under this pass (it cannot while locked): roll the pass back."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What a due schedule does now: the occurrences to fire, oldest first, and the next one
    after them (None: no occurrence is left)."""

    fire: list[datetime]
    next_run_at: datetime | None


def plan(schedule: Schedule, now: datetime, *, grace_seconds: float, cap: int) -> Plan:
    """Occurrences due at ``now``: those at most ``grace_seconds`` late are on time and fire;
    older ones were missed, and the schedule's ``catchup`` decides: ``skip`` drops them,
    ``latest`` fires the newest inside the window once (when none is on time), ``all`` fires
    every one inside the window, ``cap`` per pass."""
    assert schedule.next_run_at is not None
    recurrence = recurrence_of(schedule)
    start = schedule.next_run_at
    on_time_from = max(start, now - timedelta(seconds=grace_seconds))
    window = schedule.catchup_window_seconds
    window_from = start if window is None else max(start, now - timedelta(seconds=window))
    if schedule.catchup is Catchup.ALL:
        fire = recurrence.between(window_from, now, cap + 1)
        if len(fire) > cap:  # the rest next pass
            return Plan(fire[:cap], fire[cap])
        return Plan(fire, recurrence.next_after(now))
    fire = recurrence.between(on_time_from, now, cap)
    if not fire and schedule.catchup is Catchup.LATEST and window_from < on_time_from:
        newest = recurrence.latest(window_from, on_time_from - timedelta(microseconds=1))
        fire = [newest] if newest is not None else []
    return Plan(fire, recurrence.next_after(now))


@dataclass
class PassResult:
    schedules: int = 0
    created: list[Run] = field(default_factory=list)
    skipped: int = 0
    replaced: list[RunRef] = field(default_factory=list)


@dataclass
class _Writes:
    firings: list[dict[str, Any]] = field(default_factory=list)
    advances: list[store.Advance] = field(default_factory=list)


class ScheduleFirer:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        runs: RunService,
        grace_seconds: float,
        batch_size: int,
        max_catchup_runs: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._runs = runs
        self._grace = grace_seconds
        self._batch = batch_size
        self._cap = max_catchup_runs
        self._clock = clock

    def fire_due(
        self,
        *,
        stop: Callable[[], bool] = lambda: False,
        on_pass: Callable[[PassResult], None] = lambda _: None,
    ) -> int:
        """Fire what is due now, pass after pass while passes come back full, until ``stop()``.
        Returns the number of runs created; ``on_pass`` hears of each pass."""
        due = self.next_due()
        if due is None or due > self._clock():
            return 0  # nothing due: no write transaction (on SQLite it would lock the database)
        created = 0
        while not stop():
            result = self.fire_pass()
            created += len(result.created)
            on_pass(result)
            if result.schedules < self._batch:
                break
        return created

    def fire_pass(self) -> PassResult:
        now = self._clock()
        result = PassResult()
        try:
            with self._engine.begin() as conn:
                store.take_write_lock(conn)
                due = store.due_schedules(conn, now, self._batch)
                result.schedules = len(due)
                writes = _Writes()
                for schedule in due:
                    self._fire(schedule, now, result, writes, conn)
                # The pass's writes together: the schedules moved on, the runs in one
                # statement, then the firings (which name the runs) in another.
                if not store.advance_many(conn, writes.advances):
                    raise _Raced()
                self._runs.creation.insert(conn, result.created)
                store.insert_firings(conn, writes.firings)
        except _Raced:
            log.warning("a due schedule moved on under this pass; it is fired again next pass")
            return PassResult()
        # After the commit: the earlier runs of Replace schedules end, then the jobs go out.
        for ref in result.replaced:
            earlier = self._runs.load(ref)
            if earlier is not None:
                self._runs.cancel_run(earlier)
        self._runs.creation.send_many(result.created)
        return result

    def _fire(
        self,
        schedule: Schedule,
        now: datetime,
        result: PassResult,
        writes: _Writes,
        conn: sa.Connection,
    ) -> None:
        """Plan what a due schedule does now: its runs, firings and next occurrence, which
        the pass writes together."""
        firings = writes.firings
        todo = plan(schedule, now, grace_seconds=self._grace, cap=self._cap)
        policy = schedule.concurrency_policy
        active = (
            store.active_run_ids(conn, schedule.project_id, schedule.id)
            if policy is not ConcurrencyPolicy.ALLOW
            else []
        )
        created = skipped = 0
        last: datetime | None = None
        values: dict[str, Any] = {"next_run_at": todo.next_run_at, "updated_at": now}
        for occurrence in todo.fire:
            if schedule.max_runs is not None and schedule.run_count + created >= schedule.max_runs:
                break
            last = occurrence
            if policy is ConcurrencyPolicy.FORBID and active:
                firings.append(
                    store.firing_row(
                        schedule, outcome=FiringOutcome.SKIPPED, now=now, scheduled_for=occurrence
                    )
                )
                skipped += 1
                continue
            if policy is ConcurrencyPolicy.REPLACE:
                result.replaced += [RunRef(schedule.project_id, r) for r in active]
            run = self._prepare(schedule, occurrence, now, values, firings)
            if run is None:
                skipped += 1
                continue
            result.created.append(run)
            active = [run.run_id]
            created += 1
        if last is not None:
            values["last_scheduled_at"] = last
        count = schedule.run_count + created
        if todo.next_run_at is None or (
            schedule.max_runs is not None and count >= schedule.max_runs
        ):
            values |= {
                "status": ScheduleStatus.COMPLETED.value,
                "completed_at": now,
                "next_run_at": None,
            }
        writes.advances.append(store.Advance(schedule, values, created, skipped))
        result.skipped += skipped

    def _prepare(
        self,
        schedule: Schedule,
        occurrence: datetime,
        now: datetime,
        values: dict[str, Any],
        firings: list[dict[str, Any]],
    ) -> Run | None:
        """The run of one occurrence and its firing, to be inserted in the pass's transaction
        (its job is sent after the commit); None, the occurrence skipped and its reason in
        ``values``, when the run is refused (the target went away, or a limit changed)."""
        try:
            run = self._runs.creation.prepare(schedule.project_id, run_request(schedule))
        except RunsError as exc:
            code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
            values |= _failure(now, code=code, message=exc.detail)
            firings.append(
                store.firing_row(
                    schedule, outcome=FiringOutcome.SKIPPED, now=now, scheduled_for=occurrence
                )
            )
            return None
        firings.append(
            store.firing_row(
                schedule,
                outcome=FiringOutcome.CREATED,
                now=now,
                scheduled_for=occurrence,
                run_id=run.run_id,
            )
        )
        return run

    # -- outcomes ---------------------------------------------------------------------------

    def settle(self, limit: int = 500) -> int:
        """Bring the schedules' last success and last failure up to date with runs that ended.
        Safe in several schedulers at once (the updates only move forward)."""
        with self._engine.begin() as conn:
            ended = store.ended_unsettled(conn, limit)
            # Only the newest success and the newest failure of each schedule are written.
            successes: dict[str, datetime] = {}
            failures: dict[str, tuple[datetime, store.EndedRun]] = {}
            for run in ended:
                at = run.completed_at or self._clock()
                if run.status == RunStatus.COMPLETED.value:
                    successes[run.schedule_id] = max(at, successes.get(run.schedule_id, at))
                elif run.schedule_id not in failures or failures[run.schedule_id][0] <= at:
                    failures[run.schedule_id] = (at, run)
            for schedule_id, at in successes.items():
                store.record_success(conn, schedule_id, at)
            for schedule_id, (at, run) in failures.items():
                error = run.error if isinstance(run.error, dict) else {}
                store.record_failure(
                    conn,
                    schedule_id,
                    at,
                    code=error.get("code") or run.status,
                    message=error.get("message"),
                    run_id=run.run_id,
                )
            if ended:
                store.settle(conn, [run.firing_id for run in ended])
        return len(ended)

    def next_due(self) -> datetime | None:
        """When the earliest active schedule is due."""
        with self._engine.connect() as conn:
            return store.earliest_due(conn)


def _failure(now: datetime, *, code: str, message: str) -> dict[str, Any]:
    return {
        "last_failure_at": now,
        "last_failure_code": code,
        "last_failure_message": message,
        "last_failure_run_id": None,
    }
