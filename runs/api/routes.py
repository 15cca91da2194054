"""Routes of the Runs API. Each parses, calls one service method and shapes the output.

Routes are coroutines that hand their one blocking service call to a thread
(``Services.blocking``): one hop per request, where sync routes and dependencies would each
take their own; parsing and the response model's check stay on the event loop. Creates go
through the intake, which accepts those that arrive together in one hop and one commit.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.routing import APIRoute
from pydantic import StringConstraints

from runs.api.openapi import problems
from runs.api.params import (
    AUTHENTICATED,
    FILTER,
    CursorQuery,
    ProjectDep,
    ProjectPath,
    ServicesDep,
    TargetFilter,
    listing,
    one_of,
    page_size,
    referenced,
    split,
)
from runs.domain.events import MAX_EVENT_ID
from runs.domain.runs import RUN_ID_PATTERN, Run, RunKind, RunStatus
from runs.persistence.records import RunFilters
from runs.schemas.catalog import (
    DefinitionListOut,
    DefinitionOut,
    NodeListOut,
    NodeOut,
    ProjectOut,
    WhoAmIOut,
)
from runs.schemas.common import PageInfo
from runs.schemas.runs import (
    ApprovalIn,
    ApprovalOut,
    CancelRunOut,
    CreateRunIn,
    CreateRunOut,
    RunEventListOut,
    RunEventOut,
    RunListOut,
    RunOut,
    SignalIn,
    SignalOut,
)

router = APIRouter()

RunIdPath = Annotated[str, Path(max_length=128, description="the run_id of a run")]
StatusFilter = Annotated[str, StringConstraints(max_length=100, pattern=listing(one_of(RunStatus)))]
KindFilter = Annotated[str, StringConstraints(max_length=50, pattern=listing(one_of(RunKind)))]


@router.post(
    "/runs",
    status_code=202,
    responses=problems(400, 404, 413, 422, *AUTHENTICATED),
    tags=["runs"],
)
async def create_run(body: CreateRunIn, project: ProjectDep, svc: ServicesDep) -> CreateRunOut:
    run, duplicate = await svc.intake.create(project, body.to_request())
    return CreateRunOut(accepted=True, duplicate=duplicate, run=RunOut.from_run(run))


def create_run_route() -> APIRoute:
    """The route of ``create_run`` (``runs.api.creates.CreateFastLane`` stands in for it)."""
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is create_run)


@router.get(
    "/runs/{run_id}",
    responses=problems(400, 404, *AUTHENTICATED),
    tags=["runs"],
)
async def get_run(run_id: RunIdPath, project: ProjectDep, svc: ServicesDep) -> RunOut:
    return RunOut.from_run(await svc.blocking(svc.runs.get, project, run_id))


@router.get(
    "/runs/{run_id}/events",
    responses=problems(400, 404, *AUTHENTICATED),
    tags=["runs"],
)
async def list_events(
    run_id: RunIdPath,
    project: ProjectDep,
    svc: ServicesDep,
    after_event_id: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="exclusive; 0 = from the start")
    ] = 0,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> RunEventListOut:
    page = await svc.blocking(
        svc.runs.events, project, run_id, after=after_event_id, limit=page_size(svc, limit)
    )
    return RunEventListOut(
        data=[RunEventOut.from_event(e) for e in page.items], page_info=PageInfo(next=page.next)
    )


@router.post(
    "/runs/{run_id}/cancel",
    responses=problems(400, 404, 422, *AUTHENTICATED),
    tags=["runs"],
)
async def cancel_run(run_id: RunIdPath, project: ProjectDep, svc: ServicesDep) -> CancelRunOut:
    cancelled, run = await svc.blocking(svc.runs.cancel, project, run_id)
    return CancelRunOut(cancelled=cancelled, run=RunOut.from_run(run))


@router.post(
    "/runs/{run_id}/approvals",
    responses=problems(400, 404, 409, 413, *AUTHENTICATED),
    tags=["workflows"],
)
async def approve(
    run_id: RunIdPath, body: ApprovalIn, project: ProjectDep, svc: ServicesDep
) -> ApprovalOut:
    """Resume a workflow run parked on ``wait_for_approval(node_id)``."""
    run = await svc.blocking(
        svc.workflows.approve,
        project,
        run_id,
        body.node_id,
        approved=body.approved,
        comment=body.comment,
    )
    return ApprovalOut(run=RunOut.from_run(run))


@router.post(
    "/runs/{run_id}/signals",
    responses=problems(400, 404, 409, 413, *AUTHENTICATED),
    tags=["workflows"],
)
async def signal(
    run_id: RunIdPath, body: SignalIn, project: ProjectDep, svc: ServicesDep
) -> SignalOut:
    """Deliver an event to a workflow run parked on ``wait_for_event(event=...)``."""

    def deliver() -> tuple[list[str], Run]:
        resumed = svc.workflows.signal(project, run_id, body.event, body.payload)
        return resumed, svc.runs.get(project, run_id)

    resumed, run = await svc.blocking(deliver)
    return SignalOut(resumed=resumed, run=RunOut.from_run(run))


@router.get(
    "/runs/{run_id}/nodes",
    responses=problems(400, 404, *AUTHENTICATED),
    tags=["workflows"],
)
async def list_nodes(run_id: RunIdPath, project: ProjectDep, svc: ServicesDep) -> NodeListOut:
    """The nodes of a workflow run and their states, in plan order (empty for a task run)."""
    found = await svc.blocking(svc.workflows.nodes_of, project, run_id)
    return NodeListOut(data=[NodeOut.from_node(n) for n in found])


@router.get(
    "/projects/{project_reference}/runs",
    responses=problems(400, 404, *AUTHENTICATED),
    tags=["runs"],
)
async def list_runs(
    project_reference: ProjectPath,
    project: ProjectDep,
    svc: ServicesDep,
    cursor: CursorQuery = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    status: Annotated[list[StatusFilter] | None, Query(max_length=10, description=FILTER)] = None,
    kind: Annotated[list[KindFilter] | None, Query(max_length=10, description=FILTER)] = None,
    target: Annotated[list[TargetFilter] | None, Query(max_length=10, description=FILTER)] = None,
    parent_run_id: Annotated[str | None, Query(pattern=RUN_ID_PATTERN.pattern)] = None,
    schedule_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    root_only: bool = False,
) -> RunListOut:
    referenced(project_reference, project)
    filters = RunFilters(
        statuses=split(status),
        kinds=split(kind),
        targets=split(target),
        parent_run_id=parent_run_id,
        schedule_id=schedule_id,
        root_only=root_only,
    )
    page = await svc.blocking(
        svc.runs.list, project, filters, cursor=cursor, limit=page_size(svc, limit)
    )
    return RunListOut(
        data=[RunOut.from_run(r) for r in page.items], page_info=PageInfo(next=page.next)
    )


@router.get(
    "/definitions",
    responses=problems(*AUTHENTICATED),
    tags=["definitions"],
)
async def list_definitions(_: ProjectDep, svc: ServicesDep) -> DefinitionListOut:
    found = await svc.blocking(svc.catalog.list)
    return DefinitionListOut(data=[DefinitionOut.from_definition(d) for d in found])


@router.get(
    "/whoami",
    responses=problems(*AUTHENTICATED),
    tags=["projects"],
)
async def whoami(project: ProjectDep) -> WhoAmIOut:
    """The project the token belongs to: the ``{project_reference}`` of its routes."""
    return WhoAmIOut(project=ProjectOut(id=project.id, slug=project.slug, name=project.name))
