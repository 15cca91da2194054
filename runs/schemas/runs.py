"""Wire models of the Runs API (contract.md §4-§5), shared by the API and the Python SDK.

Requests ignore unknown fields (newer clients may send more) and never store them.
Responses are built by the ``*_to_wire`` functions below, which keep every nullable key present
and omit ``error.code``/``error.detail`` rather than sending null (contract §14).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, overload

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from runs.domain.definitions import Definition
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
from runs.domain.text import unstorable
from runs.domain.workflows import NodeRecord

RunKindWire = Literal["agent", "workflow", "task", "eval"]
RunStatusWire = Literal["pending", "running", "waiting", "completed", "failed", "cancelled"]
RuntimeTargetKind = Literal["main_branch", "environment", "preview_branch"]
TriggerKind = Literal["manual", "schedule", "webhook", "api"]
TARGET_PATTERN = "^(?:task|workflow):" + DEFINITION_ID_PATTERN.pattern.lstrip("^")


def check_storable(value: Any) -> Any:
    """Refuse what cannot be stored and read back: lone UTF-16 surrogates (as escapes or as
    raw bytes), NUL characters and NaN/Infinity, in keys and values at any depth.

    Python's JSON parser accepts all of them; each would otherwise fail a write, or poison the
    record for every later read.
    """
    found = unstorable(value)
    if found is not None:
        where, what = found
        raise PydanticCustomError(
            "unstorable_value",
            "contains {what}{where}; send valid Unicode text and finite numbers",
            {"what": what, "where": f" (at {where})" if where else ""},
        )
    return value


# Documented on every string of a request that has no pattern of its own.
NO_NUL = "^[^\\x00]*$"


def _document_text(schema: dict[str, Any]) -> None:
    """OpenAPI: strings carry no NUL (``check_storable`` refuses them with its own message)."""
    for prop in schema.get("properties", {}).values():
        for branch in [prop, *prop.get("anyOf", ())]:
            if branch.get("type") == "string" and "pattern" not in branch and "enum" not in branch:
                branch["pattern"] = NO_NUL


def _whole_number(value: Any) -> Any:
    """JSON Schema's ``integer`` holds 3.0 as well as 3: the strict models take it as 3."""
    if type(value) is float and value.is_integer() and abs(value) <= 2**63:
        return int(value)
    return value


# An integer field of a request: a JSON integer, or a number with a zero fraction (6225.0).
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


# Fields whose rule the service checks with a message of its own document it through
# ``json_schema_extra`` (an enum or a pattern), so that OpenAPI says what is accepted.
class RequestModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra=_document_text)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return value if isinstance(value, BaseModel) else check_storable(value)


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


class ProblemFieldOut(BaseModel):
    field: str
    message: str


class ProblemOut(BaseModel):
    """An ``application/problem+json`` error (RFC 9457), the body of every error answer."""

    type: str
    title: str
    status: int
    detail: str = Field(description="what went wrong and how to fix it")
    instance: str | None = Field(default=None, description="the path of the request")
    field: str | None = Field(default=None, description="the one field at fault, if one is")
    errors: list[ProblemFieldOut] | None = Field(
        default=None, description="each field at fault, for a request that failed validation"
    )
    request_id: str | None = Field(
        default=None, description="on a 500: the id under which the server logged the failure"
    )
    checks: dict[str, str] | None = Field(
        default=None, description="on /readyz: the state of each dependency"
    )


class PageInfo(BaseModel):
    self: str | None = None
    first: None = None
    next: str | None = None
    prev: str | None = None


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


class DefinitionOut(BaseModel):
    target: str
    kind: str
    name: str | None
    description: str | None
    input_schema: Any
    output_schema: Any

    @classmethod
    def from_definition(cls, definition: Definition) -> DefinitionOut:
        return cls(**{name: getattr(definition, name) for name in cls.model_fields})


class DefinitionListOut(BaseModel):
    data: list[DefinitionOut]


NodeStatusWire = Literal[
    "pending", "queued", "running", "waiting", "completed", "failed", "skipped", "cancelled"
]


class NodeOut(BaseModel):
    """A node of a workflow run: a step, a group, or a wait."""

    node_id: str
    position: int = Field(description="its place in the workflow's plan, from 0")
    status: NodeStatusWire
    attempt: int
    arm: str | None = Field(description="the branch a branch node took")
    output: Any
    error: RunErrorOut | None
    logs: str | None
    wait_event: str | None = Field(
        description="the event a waiting node needs (POST /signals); null for an approval"
    )
    deadline: str | None
    started_at: str | None
    completed_at: str | None

    @classmethod
    def from_node(cls, node: NodeRecord) -> NodeOut:
        return cls(
            node_id=node.node_id,
            position=node.position,
            status=node.status.value,
            attempt=node.attempt,
            arm=node.arm,
            output=node.output,
            error=RunErrorOut.from_error(node.error),
            logs=node.logs,
            wait_event=node.wait_event,
            deadline=timestamp(node.deadline),
            started_at=timestamp(node.started_at),
            completed_at=timestamp(node.completed_at),
        )


class NodeListOut(BaseModel):
    data: list[NodeOut]


class ProjectOut(BaseModel):
    id: str
    slug: str
    name: str


class WhoAmIOut(BaseModel):
    """The project the request's token belongs to."""

    project: ProjectOut


@overload
def timestamp(moment: datetime) -> str: ...
@overload
def timestamp(moment: None) -> None: ...
@overload
def timestamp(moment: datetime | None) -> str | None: ...
def timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")
