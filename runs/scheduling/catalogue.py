"""Use cases of schedules that API callers ask for: create, get, list, change, delete, and
trigger a run now. Firing due occurrences is ``firing``; syncing schedules written in code is
``source_schedules``.

Owns its transactions; never imports FastAPI, Celery or redis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from runs.domain.clock import utcnow
from runs.domain.errors import Conflict, InvalidRequest, NotFound, RunsError
from runs.domain.projects import Project
from runs.domain.runs import Run, parse_target
from runs.domain.schedules import (
    Catchup,
    ConcurrencyPolicy,
    DefinitionSource,
    FiringOutcome,
    Schedule,
    ScheduleStatus,
    new_schedule_id,
)
from runs.persistence import schedules as store
from runs.persistence import tables
from runs.persistence.cursors import decode_cursor, encode_cursor
from runs.persistence.schedules import ScheduleFilters
from runs.scheduling.recurrence import Recurrence, check_cron, time_zone
from runs.scheduling.schedule_runs import recurrence_of, run_request
from runs.services.runs import Page, RunService

# Exactly one of these says when a schedule fires.
TIMING_FIELDS = ("schedule", "interval_seconds", "run_at")
# What a PATCH may change besides the timing and the status.
CHANGEABLE = (
    "name",
    "timezone",
    "input",
    "config",
    "timeout_seconds",
    "backoff_limit",
    "concurrency_policy",
    "max_runs",
    "catchup",
    "catchup_window_seconds",
)


class ScheduleService:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        runs: RunService,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._runs = runs
        self._clock = clock

    # -- the catalogue ----------------------------------------------------------------------

    def create(
        self,
        project: Project,
        fields: Mapping[str, Any],
        *,
        source: Mapping[str, str | None] | None = None,
    ) -> Schedule:
        """A new active schedule from ``fields`` (the wire's names); ``source``: a schedule
        written in code (``source_trigger_id``, ``source_path``, ``source_hash``)."""
        now = self._clock()
        values: dict[str, Any] = {
            "id": new_schedule_id(),
            "project_id": project.id,
            "status": ScheduleStatus.ACTIVE.value,
            "timezone": "UTC",
            "cron": None,
            "interval_seconds": None,
            "run_at": None,
            "input": None,
            "config": None,
            "timeout_seconds": None,
            "backoff_limit": None,
            "concurrency_policy": ConcurrencyPolicy.ALLOW.value,
            "max_runs": None,
            "catchup": Catchup.LATEST.value,
            "catchup_window_seconds": None,
            "run_count": 0,
            "skipped_count": 0,
            "definition_source": DefinitionSource.MANUAL.value,
            "source_trigger_id": None,
            "source_path": None,
            "source_hash": None,
            "created_at": now,
            "updated_at": now,
        }
        if source is not None:
            values |= {"definition_source": DefinitionSource.SOURCE.value, **source}
        values |= self._checked(project, fields, values, creating=True)
        values["next_run_at"] = self._first_occurrence(values, now)
        try:
            with self._engine.begin() as conn:
                store.insert_schedule(conn, values)
        except IntegrityError as exc:
            raise Conflict(
                f"a schedule with source_trigger_id {values['source_trigger_id']!r} exists "
                "in this project already",
                field="source_trigger_id",
            ) from exc
        return self.get(project, values["id"])

    def get(self, project: Project, schedule_id: str) -> Schedule:
        with self._engine.connect() as conn:
            found = store.get_schedule(conn, project.id, schedule_id)
        if found is None:
            raise NotFound(f"schedule {schedule_id!r} not found")
        return found

    def list(
        self, project: Project, filters: ScheduleFilters, *, cursor: str | None, limit: int
    ) -> Page[Schedule]:
        before = decode_cursor(cursor) if cursor else None
        with self._engine.connect() as conn:
            found = store.list_schedules(conn, project.id, filters, before=before, limit=limit + 1)
        items = found[:limit]
        if len(found) <= limit:
            return Page(items, None)
        return Page(items, encode_cursor(items[-1].created_at, items[-1].id))

    def update(self, project: Project, schedule_id: str, fields: Mapping[str, Any]) -> Schedule:
        """Change what ``fields`` names; ``status`` pauses (``paused``) or resumes (``active``).

        A paused schedule keeps its next occurrence: resuming later applies its ``catchup`` to
        what fell due meanwhile. A new timing starts from now."""
        now = self._clock()
        with self._engine.begin() as conn:
            current = store.get_schedule(conn, project.id, schedule_id, for_update=True)
            if current is None:
                raise NotFound(f"schedule {schedule_id!r} not found")
            values = {c.name: getattr(current, c.name, None) for c in tables.schedules.c}
            values["status"] = current.status.value
            changes = self._checked(project, fields, values, creating=False)
            changes |= self._status_change(current, fields.get("status"), now)
            if any(name in fields for name in TIMING_FIELDS) or "timezone" in fields:
                merged = values | changes
                if current.status is not ScheduleStatus.COMPLETED:
                    changes["next_run_at"] = self._first_occurrence(merged, now)
            changes["updated_at"] = now
            store.update_schedule(conn, project.id, schedule_id, changes)
        return self.get(project, schedule_id)

    def delete(self, project: Project, schedule_id: str) -> Schedule:
        """Delete the schedule; returns it as it was. Runs it created stay (with their
        ``schedule_id``)."""
        with self._engine.begin() as conn:
            found = store.get_schedule(conn, project.id, schedule_id, for_update=True)
            if found is None or not store.delete_schedule(conn, project.id, schedule_id):
                raise NotFound(f"schedule {schedule_id!r} not found")
        return found

    # -- schedules written in code -----------------------------------------------------------

    def source_schedules(self, project: Project) -> Sequence[Schedule]:
        with self._engine.connect() as conn:
            return store.source_schedules(conn, project.id)

    def set_source(
        self, project: Project, schedule_id: str, *, path: str | None, digest: str
    ) -> None:
        with self._engine.begin() as conn:
            values = {"source_path": path, "source_hash": digest, "updated_at": self._clock()}
            store.update_schedule(conn, project.id, schedule_id, values)

    def pause(self, project: Project, schedule_id: str, *, reason: str) -> None:
        now = self._clock()
        with self._engine.begin() as conn:
            values = {
                "status": ScheduleStatus.PAUSED.value,
                "paused_at": now,
                "paused_reason": reason,
                "updated_at": now,
            }
            store.update_schedule(conn, project.id, schedule_id, values)

    # -- trigger now ------------------------------------------------------------------------

    def trigger(
        self, project: Project, schedule_id: str, *, idempotency_key: str, run_name: str | None
    ) -> Run:
        """A run of the schedule now, once per ``idempotency_key``: the same key returns the
        run it created. Counts toward ``max_runs``; refused for a completed schedule."""
        now = self._clock()
        with self._engine.begin() as conn:
            schedule = store.get_schedule(conn, project.id, schedule_id, for_update=True)
            if schedule is None:
                raise NotFound(f"schedule {schedule_id!r} not found")
            existing = store.firing_by_key(conn, schedule_id, idempotency_key)
            if existing is not None:
                return self._runs.get(project, existing)
            if schedule.status is ScheduleStatus.COMPLETED:
                raise Conflict(
                    f"schedule {schedule_id!r} is completed; create a new one to run it again",
                    field="schedule_id",
                )
            run = self._runs.creation.prepare(project.id, run_request(schedule, name=run_name))
            self._runs.creation.insert(conn, [run])
            store.insert_firing(
                conn,
                schedule,
                outcome=FiringOutcome.CREATED,
                now=now,
                idempotency_key=idempotency_key,
                run_id=run.run_id,
            )
            ended = schedule.max_runs is not None and schedule.run_count + 1 >= schedule.max_runs
            store.count_run(conn, schedule.id, _counted(now, ended=ended))
        return self._runs.creation.send(run)

    # -- checks -----------------------------------------------------------------------------

    def _checked(
        self,
        project: Project,
        fields: Mapping[str, Any],
        current: Mapping[str, Any],
        *,
        creating: bool,
    ) -> dict[str, Any]:
        """The columns ``fields`` set, each checked; 400 naming the field otherwise."""
        values: dict[str, Any] = {name: fields[name] for name in CHANGEABLE if name in fields}
        if ("name" in fields or creating) and not fields.get("name"):
            raise InvalidRequest("name is required", field="name")
        if "target" in fields or creating:
            values["target"] = _target(fields.get("target"))
        for name in ("concurrency_policy", "catchup"):
            if isinstance(values.get(name), ConcurrencyPolicy | Catchup):
                values[name] = values[name].value
        timings = [name for name in TIMING_FIELDS if fields.get(name) is not None]
        if creating or timings:
            if len(timings) != 1:
                given = ", ".join(timings) or "none"
                raise InvalidRequest(
                    "give exactly one of schedule (a cron expression), interval_seconds or "
                    f"run_at; got {given}",
                    field="schedule",
                )
            values["cron"] = values["interval_seconds"] = values["run_at"] = None
            timing = timings[0]
            if timing == "schedule":
                values["cron"] = check_cron(fields["schedule"])
            elif timing == "interval_seconds":
                values["interval_seconds"] = fields["interval_seconds"]
            else:
                run_at: datetime = fields["run_at"]
                if run_at <= self._clock():
                    raise InvalidRequest(
                        f"run_at {run_at.isoformat()} is in the past; give a future time",
                        field="run_at",
                    )
                values["run_at"] = run_at.astimezone(UTC)
        if "timezone" in values:
            time_zone(values["timezone"])
        merged = {**current, **values}
        self._check_runnable(project, merged)
        return values

    def _check_runnable(self, project: Project, merged: Mapping[str, Any]) -> None:
        """What its runs would be refused for: an unknown target (422), a too large input,
        a timeout over the server's limit (400), checked as a run's request is."""
        probe = Schedule(
            **{
                **{c.name: None for c in tables.schedules.c},
                **merged,
                "status": ScheduleStatus.ACTIVE,
                "concurrency_policy": ConcurrencyPolicy.ALLOW,
                "catchup": Catchup.LATEST,
                "definition_source": DefinitionSource.MANUAL,
                "run_count": 0,
                "skipped_count": 0,
            }
        )
        try:
            self._runs.creation.prepare(project.id, run_request(probe))
        except RunsError as exc:
            if exc.field is not None and exc.field.startswith("request."):
                exc.field = exc.field.removeprefix("request.")
                exc.detail = exc.detail.replace("request.", "")
                exc.args = (exc.detail,)
            raise

    def _status_change(self, current: Schedule, status: Any, now: datetime) -> dict[str, Any]:
        if status is None or status == current.status.value:
            return {}
        if current.status is ScheduleStatus.COMPLETED:
            raise Conflict(
                f"schedule {current.id!r} is completed; it can no longer be paused or resumed",
                field="status",
            )
        if status == ScheduleStatus.PAUSED.value:
            return {"status": status, "paused_at": now, "paused_reason": "paused through the API"}
        if status == ScheduleStatus.ACTIVE.value:
            resumed = {"status": status, "paused_at": None, "paused_reason": None}
            return resumed | {"next_run_at": self._resume_at(current, now)}
        raise InvalidRequest("status must be 'active' or 'paused'", field="status")

    @staticmethod
    def _resume_at(schedule: Schedule, now: datetime) -> datetime | None:
        """Where a resumed schedule picks up: what fell due while it was paused counts as
        missed, never as late, and its ``catchup`` decides: ``skip`` goes on from now,
        ``latest`` from the newest paused occurrence inside the window, ``all`` from where
        it stopped."""
        recurrence = recurrence_of(schedule)
        if schedule.next_run_at is None or schedule.next_run_at > now:
            return schedule.next_run_at
        if schedule.catchup is Catchup.ALL:
            return schedule.next_run_at
        if schedule.catchup is Catchup.LATEST:
            window = schedule.catchup_window_seconds
            since = schedule.next_run_at
            if window is not None:
                since = max(since, now - timedelta(seconds=window))
            newest = recurrence.latest(since, now)
            if newest is not None:
                return newest
        return recurrence.next_after(now)

    @staticmethod
    def _first_occurrence(values: Mapping[str, Any], now: datetime) -> datetime:
        recurrence = Recurrence(
            timezone=values["timezone"],
            cron=values["cron"],
            interval_seconds=values["interval_seconds"],
            anchor=now,
            run_at=values["run_at"],
        )
        first = recurrence.next_after(now)
        if first is None:
            raise InvalidRequest(
                f"schedule {values['cron']!r} never matches a date; check its day and month",
                field="schedule",
            )
        return first


def _target(value: Any) -> str:
    if not isinstance(value, Mapping) or value.get("kind") not in ("task", "workflow"):
        raise InvalidRequest(
            "target must be {'kind': 'task' or 'workflow', 'id': <definition id>}",
            field="target",
        )
    target = f"{value['kind']}:{value.get('id')}"
    try:
        parse_target(target)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.detail, field="target.id") from exc
    return target


def _counted(now: datetime, *, ended: bool) -> dict[str, Any]:
    values: dict[str, Any] = {"last_scheduled_at": now, "updated_at": now}
    if ended:
        values |= {
            "status": ScheduleStatus.COMPLETED.value,
            "completed_at": now,
            "next_run_at": None,
        }
    return values
