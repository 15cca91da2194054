"""Wire models of the Runs API (contract.md §4-§5), shared by the API and the Python SDK.

Requests ignore unknown fields (newer clients may send more) and never store them.
Responses are built by the ``*_to_wire`` functions below, which keep every nullable key present
and omit ``error.code``/``error.detail`` rather than sending null (contract §14).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    model_serializer,
)

from runs.domain.events import RunEvent
from runs.domain.runs import (
    DEFINITION_ID_PATTERN,
    RUN_ID_PATTERN,
    AttemptRecord,
    Run,
    RunError,
    RunKind,
    RunRequest,
)
from runs.schemas.common import (
    PageInfo,
    RequestModel,
    WholeNumber,
    timestamp,
)

RunKindWire = Literal["agent", "workflow", "task", "eval"]
RunStatusWire = Literal["pending", "running", "waiting", "completed", "failed", "cancelled"]
RuntimeTargetKind = Literal["main_branch", "environment", "preview_branch"]
TriggerKind = Literal["manual", "schedule", "webhook", "api"]
TARGET_PATTERN = "^(?:task|workflow):" + DEFINITION_ID_PATTERN.pattern.lstrip("^")


class OwnerIn(RequestModel):
    # "conversation" owners are part of the contract but not supported here (422).
    kind: Literal["project", "conversation"] = Field(json_schema_extra={"enum": ["project"]})
    id: str = Field(min_length=1, max_length=128)


class RunRequestIn(RequestModel):
    target: str = Field(min_length=1, max_length=210, json_schema_extra={"pattern": TARGET_PATTERN})
    workflow_id: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=500)
    batch_id: str | None = Field(default=None, max_length=200)
    runtime_target_kind: RuntimeTargetKind | None = None
    runtime_target_environment_id: str | None = Field(default=None, max_length=200)
    runtime_target_branch_id: str | None = Field(default=None, max_length=200)
    config: dict[str, Any] | None = None
    input: Any = None
    start_mode: str | None = Field(default=None, max_length=64)
    timeout_seconds: WholeNumber | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    backoff_limit: WholeNumber | None = Field(default=None, ge=0, le=100)


class CreateRunIn(RequestModel):
    # "eval" and "agent" runs are part of the contract but not supported here (422).
    kind: RunKindWire = Field(json_schema_extra={"enum": ["task", "workflow"]})
    owner: OwnerIn
    public_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        json_schema_extra={"pattern": RUN_ID_PATTERN.pattern},
    )
    parent_run_id: str | None = Field(default=None, min_length=1, max_length=128)
    request: RunRequestIn

    def to_request(self) -> RunRequest:
        """The domain's request: the fields of ``request`` carry the same names there."""
        return RunRequest(
            kind=RunKind(self.kind),
            owner_kind=self.owner.kind,
            owner_id=self.owner.id,
            public_id=self.public_id,
            parent_run_id=self.parent_run_id,
            **{name: getattr(self.request, name) for name in RunRequestIn.model_fields},
        )


class ApprovalIn(RequestModel):
    node_id: str = Field(min_length=1, max_length=200)
    approved: bool
    comment: str | None = Field(default=None, max_length=10_000)


class SignalIn(RequestModel):
    event: str = Field(min_length=1, max_length=200)
    payload: Any = None


class SignalOut(BaseModel):
    resumed: list[str]
    run: RunOut


class RunErrorOut(BaseModel):
    message: str
    code: str | None = None
    detail: Any = None

    @model_serializer
    def _omit_absent(self) -> dict[str, Any]:
        return RunError(self.message, self.code, self.detail).to_json()

    @classmethod
    def from_error(cls, error: RunError | None) -> RunErrorOut | None:
        if error is None:
            return None
        return cls(message=error.message, code=error.code, detail=error.detail)


class OwnerOut(BaseModel):
    kind: Literal["conversation", "project"]
    id: str


class CancellationOut(BaseModel):
    requested_at: str
    stopped_at: str | None


class AttemptOut(BaseModel):
    attempt: int
    status: RunStatusWire
    error: RunErrorOut | None
    started_at: str | None
    finished_at: str


class RunOut(BaseModel):
    """A run on the wire (contract §5): every nullable key present, timestamps in UTC 'Z'."""

    run_id: str
    kind: RunKindWire
    status: RunStatusWire
    owner: OwnerOut
    parent_run_id: str | None
    root_run_id: str
    waiting_reason: str | None
    metadata: Any
    target: str | None
    workflow_id: str | None
    schedule_id: str | None
    batch_id: str | None
    runtime_target_kind: RuntimeTargetKind | None
    runtime_target_environment_id: str | None
    runtime_target_branch_id: str | None
    input: Any
    config: Any
    output: Any
    error: RunErrorOut | None
    logs: str | None
    artifacts: list[Any]
    duration_ms: int | None
    exit_code: int | None
    start_mode: str | None
    timeout_seconds: int | None
    backoff_limit: int | None
    trigger_kind: TriggerKind | None
    trigger_id: str | None
    created_by: str | None
    name: str | None = None
    attempt: int = 0
    # Extra keys the official client strips: each ended attempt, and when a cancel stopped.
    attempts: list[AttemptOut] = Field(default_factory=list)
    cancellation: CancellationOut | None = None
    updated_at: str
    created_at: str
    started_at: str | None
    completed_at: str | None

    @classmethod
    def from_run(cls, run: Run) -> RunOut:
        """The one mapping of a run record to the wire: fields of the same name are copied."""
        return cls(
            **{name: getattr(run, name) for name in _COPIED_FROM_RUN},
            owner=OwnerOut.model_validate({"kind": run.owner_kind, "id": run.owner_id}),
            error=RunErrorOut.from_error(run.error),
            attempts=[_attempt_out(a) for a in run.attempts],
            cancellation=_cancellation(run),
            updated_at=timestamp(run.updated_at),
            created_at=timestamp(run.created_at),
            started_at=timestamp(run.started_at),
            completed_at=timestamp(run.completed_at),
        )


_CONVERTED = frozenset({"owner", "error", "attempts", "cancellation"})
_TIMESTAMPS = frozenset({"updated_at", "created_at", "started_at", "completed_at"})
_COPIED_FROM_RUN = tuple(
    name for name in RunOut.model_fields if name not in _CONVERTED and name not in _TIMESTAMPS
)


def _attempt_out(record: AttemptRecord) -> AttemptOut:
    return AttemptOut(
        attempt=record.attempt,
        status=record.status.value,
        error=RunErrorOut.from_error(record.error),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
    )


def _cancellation(run: Run) -> CancellationOut | None:
    if run.cancel_requested_at is None:
        return None
    return CancellationOut(
        requested_at=timestamp(run.cancel_requested_at),
        stopped_at=timestamp(run.cancel_stopped_at),
    )


class ApprovalOut(BaseModel):
    run: RunOut


class CreateRunOut(BaseModel):
    accepted: bool
    duplicate: bool
    run: RunOut


class CancelRunOut(BaseModel):
    cancelled: bool
    run: RunOut


class RunEventOut(BaseModel):
    event_id: int
    event_type: str
    payload: Any
    created_at: str

    @classmethod
    def from_event(cls, event: RunEvent) -> RunEventOut:
        return cls(
            event_id=event.event_id,
            event_type=event.event_type,
            payload=event.payload,
            created_at=timestamp(event.created_at),
        )


class RunEventListOut(BaseModel):
    data: list[RunEventOut]
    page_info: PageInfo


class RunListOut(BaseModel):
    data: list[RunOut]
    page_info: PageInfo


NodeStatusWire = Literal[
    "pending", "queued", "running", "waiting", "completed", "failed", "skipped", "cancelled"
]
