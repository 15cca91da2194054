"""Schedules: definitions that create runs later, at cron times, at an interval, or once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class ScheduleStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"


class ConcurrencyPolicy(StrEnum):
    """What an occurrence does while an earlier run of its schedule has not ended."""

    ALLOW = "Allow"  # start regardless
    FORBID = "Forbid"  # skip the occurrence (and count the skip)
    REPLACE = "Replace"  # cancel the earlier run, then start


class Catchup(StrEnum):
    """What happens to occurrences missed while no scheduler ran (or the schedule was paused)."""

    SKIP = "skip"  # drop them
    LATEST = "latest"  # run the newest one inside the window, once
    ALL = "all"  # run every one inside the window, oldest first


class DefinitionSource(StrEnum):
    MANUAL = "manual"  # created through the API
    SOURCE = "source"  # written in code beside the tasks, synced by workers


class FiringOutcome(StrEnum):
    CREATED = "created"  # a run was created
    SKIPPED = "skipped"  # Forbid: an earlier run had not ended


def new_schedule_id() -> str:
    return f"sched_{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    project_id: str
    name: str
    target: str
    status: ScheduleStatus
    timezone: str
    cron: str | None
    interval_seconds: int | None
    run_at: datetime | None
    input: Any
    config: dict[str, Any] | None
    timeout_seconds: int | None
    backoff_limit: int | None
    concurrency_policy: ConcurrencyPolicy
    max_runs: int | None
    catchup: Catchup
    catchup_window_seconds: int | None
    next_run_at: datetime | None
    last_scheduled_at: datetime | None
    last_successful_at: datetime | None
    last_failure_at: datetime | None
    last_failure_code: str | None
    last_failure_message: str | None
    last_failure_run_id: str | None
    run_count: int
    skipped_count: int
    paused_reason: str | None
    paused_at: datetime | None
    completed_at: datetime | None
    definition_source: DefinitionSource
    source_trigger_id: str | None
    source_path: str | None
    source_hash: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def kind(self) -> str:
        return self.target.partition(":")[0]

    @property
    def definition_id(self) -> str:
        return self.target.partition(":")[2]


@dataclass(frozen=True, slots=True)
class SourceSchedule:
    """A schedule written in code beside the tasks (``schedule("nightly-sync", cron=...)``):
    ``id`` is its ``source_trigger_id``, ``fields`` what the API's create takes, ``path`` the
    file it is written in, and ``hash`` a digest of ``fields`` (a change updates it)."""

    id: str
    fields: dict[str, Any]
    path: str | None
    hash: str
