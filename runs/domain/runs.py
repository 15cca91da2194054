"""Runs, their kinds and statuses, and the rules that tie targets to kinds."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from runs.domain.errors import InvalidRequest


class RunKind(StrEnum):
    TASK = "task"
    WORKFLOW = "workflow"
    EVAL = "eval"
    AGENT = "agent"


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


class Lease(StrEnum):
    """What renewing an attempt's lease found."""

    HELD = "held"  # the attempt still owns its running run
    STOPPING = "stopping"  # the run was cancelled; the attempt holds on until its work stops
    LOST = "lost"  # the run is no longer this attempt's (reclaimed, or ended)


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING})

# A run id doubles as a Redis key part and a URL path segment: keep it to a safe alphabet.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
DEFINITION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,199}$")


def new_run_id() -> str:
    return f"run_{uuid.uuid4()}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidRequest(
            "public_id must be 1-128 characters of letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit (for example run_<uuid>)",
            field="public_id",
        )
    return run_id


def parse_target(target: str) -> tuple[RunKind, str]:
    """Split ``task:<id>`` / ``workflow:<id>`` / ``eval:<id>`` into its kind and id."""
    prefix, sep, definition_id = target.partition(":")
    try:
        kind = RunKind(prefix)
    except ValueError:
        kind = None
    if (
        not sep
        or kind is None
        or kind is RunKind.AGENT
        or not DEFINITION_ID_PATTERN.fullmatch(definition_id)
    ):
        raise InvalidRequest(
            f"target {target!r} is not of the form 'task:<id>', 'workflow:<id>' or 'eval:<id>'",
            field="request.target",
        )
    return kind, definition_id


def check_target_matches_kind(kind: RunKind, target: str) -> str:
    """Return the definition id of ``target`` after checking its prefix agrees with ``kind``."""
    target_kind, definition_id = parse_target(target)
    if target_kind is not kind:
        raise InvalidRequest(
            f"kind is {kind.value!r} but target {target!r} names a {target_kind.value}; "
            f"use a target starting with '{kind.value}:'",
            field="request.target",
        )
    return definition_id


@dataclass(frozen=True, slots=True)
class RunRef:
    """What names a run: its id is unique only inside its project.

    Every lookup (API, workers, sweeper, event log, jobs) goes through both parts, so one
    project can neither see nor take another project's run ids."""

    project_id: str
    run_id: str

    @property
    def key(self) -> str:
        """One string for both parts (Redis keys, logs); project ids are UUIDs, without '/'."""
        return f"{self.project_id}/{self.run_id}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class RunError:
    """The error of a failed or cancelled run; ``code`` is machine-readable."""

    message: str
    code: str | None = None
    detail: Any = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"message": self.message}
        if self.code is not None:
            data["code"] = self.code
        if self.detail is not None:
            data["detail"] = self.detail
        return data


@dataclass(frozen=True, slots=True)
class Run:
    """A run record: the terminal execution shape plus its status, times and bookkeeping."""

    run_id: str
    project_id: str
    kind: RunKind
    status: RunStatus
    owner_kind: str
    owner_id: str
    target: str
    queue: str
    root_run_id: str
    created_at: datetime
    updated_at: datetime
    parent_run_id: str | None = None
    name: str | None = None
    waiting_reason: str | None = None
    metadata: Any = None
    workflow_id: str | None = None
    schedule_id: str | None = None
    batch_id: str | None = None
    runtime_target_kind: str | None = None
    runtime_target_environment_id: str | None = None
    runtime_target_branch_id: str | None = None
    input: Any = None
    config: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    logs: str | None = None
    artifacts: list[Any] = field(default_factory=list)
    duration_ms: int | None = None
    exit_code: int | None = None
    start_mode: str | None = None
    timeout_seconds: int | None = None
    backoff_limit: int | None = None
    trigger_kind: str | None = None
    trigger_id: str | None = None
    created_by: str | None = None
    attempt: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    cancel_stopped_at: datetime | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    available_at: datetime | None = None
    attempt_started_at: datetime | None = None

    @property
    def ref(self) -> RunRef:
        return RunRef(self.project_id, self.run_id)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as the worker reports it."""

    status: RunStatus
    output: Any = None
    error: RunError | None = None
    logs: str | None = None
    artifacts: list[Any] = field(default_factory=list)
    exit_code: int | None = None
    # False for failures another attempt cannot fix (bad input, a non-retryable error).
    retryable: bool = True

    def __post_init__(self) -> None:
        if not self.status.is_terminal:
            raise ValueError(f"an outcome must be terminal, not {self.status}")


def attempt_record(
    run: Run, status: RunStatus, error: RunError | None, finished_at: datetime
) -> dict[str, Any]:
    """What ``run.attempts`` keeps of the attempt ``run.attempt`` once it ended."""
    started = run.attempt_started_at
    return {
        "attempt": run.attempt,
        "status": status.value,
        "error": error.to_json() if error is not None else None,
        "started_at": started.isoformat() if started is not None else None,
        "finished_at": finished_at.isoformat(),
    }


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What a caller asks for when creating a run (already parsed from the wire)."""

    kind: RunKind
    owner_kind: str
    owner_id: str
    target: str
    public_id: str | None = None
    parent_run_id: str | None = None
    name: str | None = None
    workflow_id: str | None = None
    batch_id: str | None = None
    runtime_target_kind: str | None = None
    runtime_target_environment_id: str | None = None
    runtime_target_branch_id: str | None = None
    input: Any = None
    config: Any = None
    start_mode: str | None = None
    timeout_seconds: int | None = None
    backoff_limit: int | None = None
    trigger_kind: str | None = "api"
    trigger_id: str | None = None
    schedule_id: str | None = None
    metadata: Any = None
