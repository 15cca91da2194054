"""Routes of the Runs API. Each parses, calls one service method and shapes the output."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from runs.api.deps import Services, current_project, services
from runs.api.responses import JSONResponse
from runs.domain.errors import InvalidRequest, NotFound
from runs.domain.events import MAX_EVENT_ID
from runs.domain.projects import Project
from runs.domain.runs import (
    DEFINITION_ID_PATTERN,
    RUN_ID_PATTERN,
    RunKind,
    RunRequest,
    RunStatus,
)
from runs.persistence.store import RunFilters
from runs.schemas import (
    ApprovalIn,
    ApprovalOut,
    CancelRunOut,
    CreateRunIn,
    CreateRunOut,
    DefinitionListOut,
    RunEventListOut,
    RunListOut,
    RunOut,
    SignalIn,
    SignalOut,
    event_to_wire,
    page_info,
    run_to_wire,
)

router = APIRouter()

TARGET_PREFIXES = frozenset(k.value for k in RunKind)

ProjectDep = Annotated[Project, Depends(current_project)]
ServicesDep = Annotated[Services, Depends(services)]


@router.post("/runs", status_code=202, response_model=CreateRunOut, tags=["runs"])
def create_run(body: CreateRunIn, project: ProjectDep, svc: ServicesDep) -> JSONResponse:
    req = body.request
    run, duplicate = svc.runs.submit(
        project,
        RunRequest(
            kind=RunKind(body.kind),
            owner_kind=body.owner.kind,
            owner_id=body.owner.id,
            target=req.target,
            public_id=body.public_id,
            parent_run_id=body.parent_run_id,
            name=req.name,
            workflow_id=req.workflow_id,
            batch_id=req.batch_id,
            runtime_target_kind=req.runtime_target_kind,
            runtime_target_environment_id=req.runtime_target_environment_id,
            runtime_target_branch_id=req.runtime_target_branch_id,
            input=req.input,
            config=req.config,
            start_mode=req.start_mode,
            timeout_seconds=req.timeout_seconds,
            backoff_limit=req.backoff_limit,
        ),
    )
    return JSONResponse(
        {"accepted": True, "duplicate": duplicate, "run": run_to_wire(run)}, status_code=202
    )


@router.get("/runs/{run_id}", response_model=RunOut, tags=["runs"])
def get_run(run_id: str, project: ProjectDep, svc: ServicesDep) -> JSONResponse:
    return JSONResponse(run_to_wire(svc.runs.get(project, run_id)))


@router.get("/runs/{run_id}/events", response_model=RunEventListOut, tags=["runs"])
def list_events(
    run_id: str,
    project: ProjectDep,
    svc: ServicesDep,
    after_event_id: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="exclusive; 0 = from the start")
    ] = 0,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> JSONResponse:
    page = svc.runs.events(project, run_id, after=after_event_id, limit=_page_size(svc, limit))
    return JSONResponse(
        {"data": [event_to_wire(e) for e in page.items], "page_info": page_info(page.next)}
    )


@router.post("/runs/{run_id}/cancel", response_model=CancelRunOut, tags=["runs"])
def cancel_run(run_id: str, project: ProjectDep, svc: ServicesDep) -> JSONResponse:
    cancelled, run = svc.runs.cancel(project, run_id)
    return JSONResponse({"cancelled": cancelled, "run": run_to_wire(run)})


@router.post("/runs/{run_id}/approvals", response_model=ApprovalOut, tags=["workflows"])
def approve(run_id: str, body: ApprovalIn, project: ProjectDep, svc: ServicesDep) -> JSONResponse:
    """Resume a workflow run parked on ``wait_for_approval(node_id)``."""
    run = svc.workflows.approve(
        project, run_id, body.node_id, approved=body.approved, comment=body.comment
    )
    return JSONResponse({"run": run_to_wire(run)})


@router.post("/runs/{run_id}/signals", response_model=SignalOut, tags=["workflows"])
def signal(run_id: str, body: SignalIn, project: ProjectDep, svc: ServicesDep) -> JSONResponse:
    """Deliver an event to a workflow run parked on ``wait_for_event(event=...)``."""
    resumed = svc.workflows.signal(project, run_id, body.event, body.payload)
    return JSONResponse({"resumed": resumed, "run": run_to_wire(svc.runs.get(project, run_id))})


@router.get("/projects/{project_reference}/runs", response_model=RunListOut, tags=["runs"])
def list_runs(
    project_reference: str,
    project: ProjectDep,
    svc: ServicesDep,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    status: Annotated[list[str] | None, Query()] = None,
    kind: Annotated[list[str] | None, Query()] = None,
    target: Annotated[list[str] | None, Query()] = None,
    parent_run_id: str | None = None,
    root_only: bool = False,
) -> JSONResponse:
    if project_reference not in (project.id, project.slug):
        raise NotFound(f"project {project_reference!r} not found")
    filters = RunFilters(
        statuses=_closed_values("status", status, {s.value for s in RunStatus}),
        kinds=_closed_values("kind", kind, {k.value for k in RunKind}),
        targets=_targets(target),
        parent_run_id=_parent_run_id(parent_run_id),
        root_only=root_only,
    )
    page = svc.runs.list(project, filters, cursor=cursor, limit=_page_size(svc, limit))
    return JSONResponse(
        {"data": [run_to_wire(r) for r in page.items], "page_info": page_info(page.next)}
    )


@router.get("/definitions", response_model=DefinitionListOut, tags=["definitions"])
def list_definitions(_: ProjectDep, svc: ServicesDep) -> JSONResponse:
    items = [
        {
            "target": d.target,
            "kind": d.kind,
            "name": d.name,
            "description": d.description,
            "input_schema": d.input_schema,
            "output_schema": d.output_schema,
        }
        for d in svc.catalog.list()
    ]
    return JSONResponse({"data": items})


def _page_size(svc: Services, limit: int | None) -> int:
    if limit is None:
        return svc.settings.default_page_size
    if limit > svc.settings.max_page_size:
        raise InvalidRequest(
            f"limit must be between 1 and {svc.settings.max_page_size}", field="limit"
        )
    return limit


def _parent_run_id(value: str | None) -> str | None:
    if value is not None and not RUN_ID_PATTERN.fullmatch(value):
        raise InvalidRequest(
            f"parent_run_id {value!r} is not a run id; pass the run_id of a run",
            field="parent_run_id",
        )
    return value


def _targets(values: list[str] | None) -> tuple[str, ...]:
    found = _split(values)
    for value in found:
        prefix, _, definition_id = value.partition(":")
        if prefix not in TARGET_PREFIXES or not DEFINITION_ID_PATTERN.fullmatch(definition_id):
            raise InvalidRequest(
                f"target filter value {value!r} is not of the form 'task:<id>' or 'workflow:<id>'",
                field="target",
            )
    return found


def _split(values: list[str] | None) -> tuple[str, ...]:
    """Filters may be comma-separated and/or repeated."""
    return tuple(v for raw in values or () for v in raw.split(",") if v)


def _closed_values(name: str, values: list[str] | None, allowed: set[str]) -> tuple[str, ...]:
    found = _split(values)
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown {name} value(s) {', '.join(unknown)}; use {', '.join(sorted(allowed))}",
            field=name,
        )
    return found
