"""The requests of the Runs API as data, shared by the sync and the async client: each method
builds a ``Call`` (verb, path, query, body, whether it is safe to repeat, and how to read the
answer), and each client only sends it. Both therefore send the same requests and read the
same models."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from runs.client.errors import ConfigurationError
from runs.schemas.catalog import DefinitionListOut, NodeListOut, WhoAmIOut
from runs.schemas.runs import (
    ApprovalOut,
    CancelRunOut,
    CreateRunOut,
    RunEventListOut,
    RunListOut,
    RunOut,
    SignalOut,
)

Model = TypeVar("Model", bound=BaseModel)
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"RUN_FINISHED", "RUN_ERROR"})


class RuntimeTarget(TypedDict, total=False):
    runtime_target_kind: str
    runtime_target_environment_id: str | None
    runtime_target_branch_id: str | None


class TaskRunOptions(RuntimeTarget, total=False):
    """What ``create_task_run`` accepts besides the target (contract §4.1)."""

    config: dict[str, Any]
    input: Any
    name: str
    public_id: str
    parent_run_id: str
    batch_id: str
    timeout_seconds: int
    backoff_limit: int


class WorkflowRunOptions(RuntimeTarget, total=False):
    """What ``create_workflow_run`` accepts besides the workflow."""

    input: Any
    config: dict[str, Any]
    name: str
    public_id: str
    parent_run_id: str
    start_mode: str


class RunFilters(TypedDict, total=False):
    """Filters of the project's run listing; each may list several values (OR within)."""

    status: str | list[str]
    target: str | list[str]
    kind: str | list[str]
    parent_run_id: str
    schedule_id: str
    root_only: bool
    limit: int


@dataclass(frozen=True)
class Call(Generic[Model]):
    method: str
    path: str
    answer: type[Model]
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    # Repeating it cannot do the work twice: reads, cancels, and creates with a public_id.
    idempotent: bool = True


def new_public_id() -> str:
    return f"run_{uuid.uuid4()}"


def run_path(run_id: str, suffix: str = "") -> str:
    return f"/runs/{quote(run_id, safe='')}{suffix}"


class Calls:
    """Builds the calls of one project's client."""

    def __init__(self, project_reference: str | None) -> None:
        self.project_reference = project_reference

    def _project(self) -> str:
        if not self.project_reference:
            raise ConfigurationError(
                "no project: pass project_reference or set RUNS_PROJECT (its id or slug)"
            )
        return self.project_reference

    def _create(
        self, kind: str, request: dict[str, Any], options: dict[str, Any]
    ) -> Call[CreateRunOut]:
        public_id = options.pop("public_id", None) or new_public_id()
        parent = options.pop("parent_run_id", None)
        body: dict[str, Any] = {
            "kind": kind,
            "owner": {"kind": "project", "id": self._project()},
            "public_id": public_id,
            "request": {**request, **options},
        }
        if parent is not None:
            body["parent_run_id"] = parent
        return Call("POST", "/runs", CreateRunOut, body=body)

    def create_task_run(self, target: str, options: TaskRunOptions) -> Call[CreateRunOut]:
        if not target.startswith("task:"):
            target = f"task:{target}"
        return self._create("task", {"target": target}, dict(options))

    def create_workflow_run(self, workflow: str, options: WorkflowRunOptions) -> Call[CreateRunOut]:
        workflow_id = workflow.removeprefix("workflow:")
        request = {"target": f"workflow:{workflow_id}", "workflow_id": workflow_id}
        return self._create("workflow", request, dict(options))

    def get(self, run_id: str) -> Call[RunOut]:
        return Call("GET", run_path(run_id), RunOut)

    def events(self, run_id: str, after: int, limit: int | None) -> Call[RunEventListOut]:
        params: dict[str, Any] = {"after_event_id": after}
        if limit is not None:
            params["limit"] = limit
        return Call("GET", run_path(run_id, "/events"), RunEventListOut, params=params)

    def list(self, cursor: str | None, filters: RunFilters) -> Call[RunListOut]:
        params: dict[str, Any] = {}
        if cursor is not None:
            params["cursor"] = cursor
        for name, value in filters.items():
            if isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = str(value).lower()
            params[name] = value
        path = f"/projects/{quote(self._project(), safe='')}/runs"
        return Call("GET", path, RunListOut, params=params)

    def cancel(self, run_id: str) -> Call[CancelRunOut]:
        return Call("POST", run_path(run_id, "/cancel"), CancelRunOut)

    def approve(
        self, run_id: str, node_id: str, approved: bool, comment: str | None
    ) -> Call[ApprovalOut]:
        body: dict[str, Any] = {"node_id": node_id, "approved": approved}
        if comment is not None:
            body["comment"] = comment
        # A second approval of the same node is refused (409), never applied twice.
        return Call("POST", run_path(run_id, "/approvals"), ApprovalOut, body=body)

    def signal(self, run_id: str, event: str, payload: Any) -> Call[SignalOut]:
        body = {"event": event, "payload": payload}
        # Delivered twice, a signal could resume a later wait: sent again only when the
        # first request surely never reached the server.
        return Call("POST", run_path(run_id, "/signals"), SignalOut, body=body, idempotent=False)

    def nodes(self, run_id: str) -> Call[NodeListOut]:
        return Call("GET", run_path(run_id, "/nodes"), NodeListOut)

    def definitions(self) -> Call[DefinitionListOut]:
        return Call("GET", "/definitions", DefinitionListOut)

    def whoami(self) -> Call[WhoAmIOut]:
        return Call("GET", "/whoami", WhoAmIOut)
