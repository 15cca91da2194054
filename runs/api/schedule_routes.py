"""Routes of a project's schedules: the catalogue (create, list, get, change, delete) and
"trigger now". Each parses, calls one service method and shapes the output."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import StringConstraints

from runs.api.deps import Services
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
from runs.domain.schedules import Schedule, ScheduleStatus
from runs.persistence.schedules import ScheduleFilters
from runs.schemas.common import PageInfo
from runs.schemas.schedules import (
    CreateScheduleIn,
    ScheduleListOut,
    ScheduleOut,
    ScheduleRunIn,
    ScheduleRunOut,
    UpdateScheduleIn,
)

router = APIRouter(tags=["schedules"])

ScheduleIdPath = Annotated[
    str, Path(max_length=64, description="the id of a schedule (sched_<uuid>)")
]
StatusFilter = Annotated[
    str, StringConstraints(max_length=100, pattern=listing(one_of(ScheduleStatus)))
]


def _out(svc: Services, schedule: Schedule) -> ScheduleOut:
    return ScheduleOut.from_schedule(schedule, default_timeout=svc.settings.max_timeout_seconds)


@router.post(
    "/projects/{project_reference}/schedules",
    status_code=201,
    responses=problems(400, 404, 413, 422, *AUTHENTICATED),
)
async def create_schedule(
    project_reference: ProjectPath, body: CreateScheduleIn, project: ProjectDep, svc: ServicesDep
) -> ScheduleOut:
    owner = referenced(project_reference, project)
    return _out(svc, await svc.blocking(svc.schedules.create, owner, body.to_fields()))


@router.get(
    "/projects/{project_reference}/schedules",
    responses=problems(400, 404, *AUTHENTICATED),
)
async def list_schedules(
    project_reference: ProjectPath,
    project: ProjectDep,
    svc: ServicesDep,
    cursor: CursorQuery = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    status: Annotated[list[StatusFilter] | None, Query(max_length=10, description=FILTER)] = None,
    target: Annotated[list[TargetFilter] | None, Query(max_length=10, description=FILTER)] = None,
    source_trigger_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> ScheduleListOut:
    owner = referenced(project_reference, project)
    filters = ScheduleFilters(
        statuses=split(status), targets=split(target), source_trigger_id=source_trigger_id
    )
    page = await svc.blocking(
        svc.schedules.list, owner, filters, cursor=cursor, limit=page_size(svc, limit)
    )
    found = [_out(svc, s) for s in page.items]
    return ScheduleListOut(
        schedules=found,
        source_schedules=[s for s in found if s.definition_source == "source"],
        page_info=PageInfo(next=page.next),
    )


@router.get(
    "/projects/{project_reference}/schedules/{schedule_id}",
    responses=problems(400, 404, *AUTHENTICATED),
)
async def get_schedule(
    project_reference: ProjectPath,
    schedule_id: ScheduleIdPath,
    project: ProjectDep,
    svc: ServicesDep,
) -> ScheduleOut:
    owner = referenced(project_reference, project)
    return _out(svc, await svc.blocking(svc.schedules.get, owner, schedule_id))


@router.patch(
    "/projects/{project_reference}/schedules/{schedule_id}",
    responses=problems(400, 404, 409, 413, 422, *AUTHENTICATED),
)
async def update_schedule(
    project_reference: ProjectPath,
    schedule_id: ScheduleIdPath,
    body: UpdateScheduleIn,
    project: ProjectDep,
    svc: ServicesDep,
) -> ScheduleOut:
    """Change fields; ``status: "paused"`` pauses, ``"active"`` resumes."""
    owner = referenced(project_reference, project)
    changed = await svc.blocking(svc.schedules.update, owner, schedule_id, body.to_fields())
    return _out(svc, changed)


@router.delete(
    "/projects/{project_reference}/schedules/{schedule_id}",
    responses=problems(400, 404, *AUTHENTICATED),
)
async def delete_schedule(
    project_reference: ProjectPath,
    schedule_id: ScheduleIdPath,
    project: ProjectDep,
    svc: ServicesDep,
) -> ScheduleOut:
    """Delete the schedule; answers what it was. The runs it created stay."""
    owner = referenced(project_reference, project)
    return _out(svc, await svc.blocking(svc.schedules.delete, owner, schedule_id))


@router.post(
    "/projects/{project_reference}/schedules/{schedule_id}/runs",
    status_code=201,
    responses=problems(400, 404, 409, 422, *AUTHENTICATED),
)
async def trigger_schedule(
    project_reference: ProjectPath,
    schedule_id: ScheduleIdPath,
    body: ScheduleRunIn,
    project: ProjectDep,
    svc: ServicesDep,
) -> ScheduleRunOut:
    """Run the schedule's target now; the same ``idempotency_key`` returns the same run."""
    owner = referenced(project_reference, project)
    run = await svc.blocking(
        svc.schedules.trigger,
        owner,
        schedule_id,
        idempotency_key=body.idempotency_key,
        run_name=body.run_name,
    )
    return ScheduleRunOut(run_id=run.run_id, run_execution_id=run.run_id, schedule_id=schedule_id)
