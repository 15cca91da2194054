"""Request dependencies: the services on app state and the caller's project from its token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runs.access import AccessService
from runs.catalog import DefinitionCatalog
from runs.domain.projects import Project
from runs.service import RunService
from runs.settings import Settings
from runs.workflow_state import WorkflowState


@dataclass
class Services:
    settings: Settings
    runs: RunService
    access: AccessService
    catalog: DefinitionCatalog
    workflows: WorkflowState


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


# Documents the bearer scheme in OpenAPI; a missing or malformed header is our own 401.
_bearer = HTTPBearer(auto_error=False, description="a project API token")


def current_project(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Project:
    secret = credentials.credentials.strip() if credentials is not None else None
    return services(request).access.authenticate(secret)
