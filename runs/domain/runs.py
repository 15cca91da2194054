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


class ErrorCode(StrEnum):
    """The ``error.code`` this service gives a failed or cancelled run or workflow node.

    A task may raise ``TaskFailed`` with a code of its own; these are the service's."""

    CANCELLED = "cancelled"  # cancelled through the API
    WORKER_LOST = "worker_lost"  # the attempt's worker stopped renewing its lease
    EXPIRED = "expired"  # waited for a worker longer than RUNS_PENDING_TTL_SECONDS
    TIMEOUT = "timeout"  # the attempt, or a workflow's wait, ran out of time
    INTERRUPTED = "interrupted"  # the worker stopped the task (shutting down)
    UNKNOWN_TARGET = "unknown_target"  # no definition of the target on the worker
    INVALID_INPUT = "invalid_input"  # the config does not match the task's input model
    INVALID_OUTPUT = "invalid_output"  # the result is not JSON, or not the output model
    OUTPUT_TOO_LARGE = "output_too_large"  # the result exceeds RUNS_MAX_OUTPUT_BYTES
    TASK_FAILED = "task_failed"  # the task raised TaskFailed without a code
    TASK_ERROR = "task_error"  # the task raised any other exception
    PROCESS_ERROR = "process_error"  # a command task's process could not be started
    PROCESS_FAILED = "process_failed"  # a command task's process exited non-zero
    WORKER_ERROR = "worker_error"  # the worker's own runtime failed around the task
    DEFINITION_ERROR = "definition_error"  # a workflow's definition raised
    REJECTED = "rejected"  # an approval was refused


@dataclass(frozen=True, slots=True)
class RunError:
    """The error of a failed or cancelled run (or node); ``code`` is machine-readable."""

    message: str
    code: str | None = None  # an ErrorCode, or a task's own code
    detail: Any = None

    def to_json(self) -> dict[str, Any]:
        """The stored and wire form: ``code`` and ``detail`` are omitted, never null."""
        data: dict[str, Any] = {"message": self.message}
        if self.code is not None:
            data["code"] = str(self.code)
        if self.detail is not None:
            data["detail"] = self.detail
        return data

    @classmethod
    def from_json(cls, data: Any) -> RunError | None:
        if data is None:
            return None
        return cls(str(data.get("message", "")), data.get("code"), data.get("detail"))


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What a run keeps of one of its ended attempts (``Run.attempts``)."""

    attempt: int
    status: RunStatus
    error: RunError | None
    started_at: datetime | None
    finished_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "status": self.status.value,
            "error": self.error.to_json() if self.error is not None else None,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttemptRecord:
        started, finished = data.get("started_at"), data["finished_at"]
        return cls(
            attempt=int(data["attempt"]),
            status=RunStatus(data["status"]),
            error=RunError.from_json(data.get("error")),
            started_at=datetime.fromisoformat(started) if started else None,
            finished_at=datetime.fromisoformat(finished),
        )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


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
    error: RunError | None = None
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
    attempts: tuple[AttemptRecord, ...] = ()
    available_at: datetime | None = None
    attempt_started_at: datetime | None = None

    @property
    def ref(self) -> RunRef:
        return RunRef(self.project_id, self.run_id)

    @property
    def first_start(self) -> bool:
        """A claimed run's attempt is its first start: attempt 1, and not a run handed back
        (which starts again under attempt 1, after it first started)."""
        return self.attempt == 1 and self.started_at == self.attempt_started_at


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
) -> AttemptRecord:
    """What ``run.attempts`` keeps of the attempt ``run.attempt`` once it ended."""
    return AttemptRecord(run.attempt, status, error, run.attempt_started_at, finished_at)


def attempts_to_json(attempts: tuple[AttemptRecord, ...]) -> list[dict[str, Any]] | None:
    return [a.to_json() for a in attempts] or None


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


def duration_ms(started_at: datetime, ended_at: datetime) -> int:
    """Milliseconds from ``started_at`` to ``ended_at``, never negative."""
    return max(0, int((ended_at - started_at).total_seconds() * 1000))
