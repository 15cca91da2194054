"""Request dependencies: the services on app state and the caller's project from its token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runs.api.creates import CreateIntake
from runs.domain.projects import Project
from runs.observability.json_logs import bind_run_fields
from runs.scheduling.catalogue import ScheduleService
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.services.workflows import WorkflowService
from runs.settings import Settings
from runs.streams.feeds import RunFeeds
from runs.streams.following import EventFollower

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    runs: RunService
    access: AccessService
    catalog: DefinitionCatalog
    workflows: WorkflowService
    schedules: ScheduleService
    follower: EventFollower
    feeds: RunFeeds
    # Threads for blocking calls: as many as the database pool has connections.
    threads: anyio.CapacityLimiter = field(init=False)
    intake: CreateIntake = field(init=False)

    def __post_init__(self) -> None:
        self.threads = anyio.CapacityLimiter(self.settings.database_pool_size)
        self.intake = CreateIntake(self.runs.create_many, self.blocking)

    async def blocking(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking service call in a thread, off the event loop."""
        return await anyio.to_thread.run_sync(partial(call, *args, **kwargs), limiter=self.threads)


async def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


# Documents the bearer scheme in OpenAPI; a missing or malformed header is our own 401.
_bearer = HTTPBearer(auto_error=False, description="a project API token")


async def current_project(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Project:
    """A token seen lately is answered on the event loop; any other is looked up in a thread."""
    secret = credentials.credentials.strip() if credentials is not None else None
    svc = await services(request)
    project = svc.access.cached(secret)
    if project is None:
        project = await svc.blocking(svc.access.authenticate, secret)
    # The request's log lines name its project (each request runs in a context of its own).
    bind_run_fields(project_id=project.id)
    return project
