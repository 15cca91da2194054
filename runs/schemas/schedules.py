"""Wire models of schedules (contract §4.3, §5.3, §10), shared by the API and the SDK.

A schedule says when it fires with exactly one of ``schedule`` (five-field cron, alias
``cron``), ``interval_seconds`` or ``run_at`` (ISO-8601 with an offset); the service checks
the rules that need more than a type (one timing, a parsable cron, a known time zone, a
future ``run_at``, a known target) and names the field in its 400.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from runs.domain.errors import InvalidRequest
from runs.domain.schedules import Schedule
from runs.schemas.common import PageInfo, RequestModel, WholeNumber, timestamp

ScheduleStatusWire = Literal["active", "paused", "completed"]
ConcurrencyPolicyWire = Literal["Allow", "Forbid", "Replace"]
CatchupWire = Literal["skip", "latest", "all"]
YEAR_SECONDS = 366 * 24 * 3600


class ScheduleTargetIn(RequestModel):
    kind: Literal["task", "workflow"]
    id: str = Field(min_length=1, max_length=200)


class _ScheduleFields(RequestModel):
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    schedule: str | None = Field(default=None, min_length=1, max_length=200)
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    interval_seconds: WholeNumber | None = Field(default=None, ge=1, le=YEAR_SECONDS)
    run_at: str | None = Field(default=None, min_length=1, max_length=64)
    input: Any = None
    config: dict[str, Any] | None = None
    timeout_seconds: WholeNumber | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    backoff_limit: WholeNumber | None = Field(default=None, ge=0, le=100)
    concurrency_policy: ConcurrencyPolicyWire | None = None
    max_runs: WholeNumber | None = Field(default=None, ge=1)
    catchup: CatchupWire | None = None
    catchup_window_seconds: WholeNumber | None = Field(default=None, ge=1, le=YEAR_SECONDS)

    def to_fields(self) -> dict[str, Any]:
        """The fields the request set, by their stored names (``cron`` read as
        ``schedule``, ``run_at`` parsed)."""
        fields = {name: getattr(self, name) for name in self.model_fields_set}
        cron = fields.pop("cron", None)
        if cron is not None:
            if fields.get("schedule") not in (None, cron):
                raise InvalidRequest(
                    "schedule and its alias cron differ; send one of them", field="cron"
                )
            fields["schedule"] = cron
        if fields.get("run_at") is not None:
            fields["run_at"] = parse_instant(fields["run_at"])
        for name in ("timezone", "concurrency_policy", "catchup"):
            if name in fields and fields[name] is None:
                del fields[name]  # null: the default
        return fields


class CreateScheduleIn(_ScheduleFields):
    name: str = Field(min_length=1, max_length=200)
    target: ScheduleTargetIn

    def to_fields(self) -> dict[str, Any]:
        fields = super().to_fields()
        fields["name"] = self.name
        fields["target"] = self.target.model_dump()
        return fields


class UpdateScheduleIn(_ScheduleFields):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    status: Literal["active", "paused"] | None = None


class ScheduleRunIn(RequestModel):
    run_name: str | None = Field(default=None, max_length=500)
    idempotency_key: str = Field(min_length=1, max_length=200)


class ScheduleRunOut(BaseModel):
    run_id: str
    run_execution_id: str
    schedule_id: str


class ScheduleTargetOut(BaseModel):
    kind: Literal["task", "workflow"]
    id: str


class ScheduleOut(BaseModel):
    """A schedule on the wire: every field of the hosted schedule object (§5.3), and this
    server's own (``interval_seconds``, ``run_at``, ``next_run_at``, ``catchup``, …)."""

    id: str
    project_id: str
    name: str
    status: ScheduleStatusWire
    target: ScheduleTargetOut
    schedule: str | None
    interval_seconds: int | None
    run_at: str | None
    timezone: str
    runtime_target_kind: None = None
    runtime_target_environment_id: None = None
    runtime_target_branch_id: None = None
    input: Any
    config: Any
    # The client requires an integer: a schedule that sets none shows the server's cap.
    timeout_seconds: int
    backoff_limit: int | None
    concurrency_policy: ConcurrencyPolicyWire
    max_runs: int | None
    catchup: CatchupWire
    catchup_window_seconds: int | None
    next_run_at: str | None
    last_scheduled_at: str | None
    last_successful_at: str | None
    last_failure_at: str | None
    last_failure_code: str | None
    last_failure_message: str | None
    last_failure_run_id: str | None
    health: None = None
    run_count: int
    skipped_count: int
    completed_at: str | None
    paused_reason: str | None
    paused_at: str | None
    definition_source: Literal["manual", "source"]
    source_trigger_id: str | None
    source_path: str | None
    source_hash: str | None
    created_by: None = None
    integration_requirements: list[Any] = Field(default_factory=list)
    created_at: str
    updated_at: str

    @classmethod
    def from_schedule(cls, schedule: Schedule, *, default_timeout: int) -> ScheduleOut:
        kind, _, definition_id = schedule.target.partition(":")
        copied = {name: getattr(schedule, name) for name in _COPIED}
        times = {name: timestamp(getattr(schedule, name)) for name in _TIMES}
        return cls(
            **copied,
            **times,
            target=ScheduleTargetOut.model_validate({"kind": kind, "id": definition_id}),
            schedule=schedule.cron,
            timeout_seconds=schedule.timeout_seconds or default_timeout,
        )


_TIMES = (
    "run_at",
    "next_run_at",
    "last_scheduled_at",
    "last_successful_at",
    "last_failure_at",
    "completed_at",
    "paused_at",
    "created_at",
    "updated_at",
)
_COPIED = tuple(
    name
    for name in ScheduleOut.model_fields
    if name not in _TIMES
    and name in Schedule.__dataclass_fields__
    and name not in ("target", "timeout_seconds")
)


class ScheduleListOut(BaseModel):
    """``schedules``: the page; ``source_schedules``: those of them written in code."""

    schedules: list[ScheduleOut]
    source_schedules: list[ScheduleOut]
    page_info: PageInfo


def parse_instant(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"run_at {value!r} is not an ISO-8601 time (for example 2027-01-31T09:00:00+01:00)",
            field="run_at",
        ) from exc
    if moment.tzinfo is None:
        raise InvalidRequest(
            f"run_at {value!r} has no UTC offset; add one (for example +00:00 or Z)",
            field="run_at",
        )
    return moment
