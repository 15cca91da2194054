"""What a schedule's runs are: the request each of its occurrences makes, and the recurrence
its occurrences follow. The catalogue and the firing both build on these."""

from __future__ import annotations

from runs.domain.runs import RunKind, RunRequest, parse_target
from runs.domain.schedules import Schedule
from runs.scheduling.recurrence import Recurrence


def recurrence_of(schedule: Schedule) -> Recurrence:
    """An interval counts from the schedule's next occurrence, which is always on its grid."""
    return Recurrence(
        timezone=schedule.timezone,
        cron=schedule.cron,
        interval_seconds=schedule.interval_seconds,
        anchor=schedule.next_run_at or schedule.created_at,
        run_at=schedule.run_at,
    )


def run_request(schedule: Schedule, *, name: str | None = None) -> RunRequest:
    """The run an occurrence (or a trigger) of ``schedule`` creates."""
    kind, definition_id = parse_target(schedule.target)
    return RunRequest(
        kind=kind,
        owner_kind="project",
        owner_id=schedule.project_id,
        target=schedule.target,
        name=name or schedule.name,
        workflow_id=definition_id if kind is RunKind.WORKFLOW else None,
        input=schedule.input,
        config=schedule.config,
        timeout_seconds=schedule.timeout_seconds,
        backoff_limit=schedule.backoff_limit,
        trigger_kind="schedule",
        trigger_id=schedule.id,
        schedule_id=schedule.id,
    )
