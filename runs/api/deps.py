"""Request dependencies: the services on app state and the caller's project from its token."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

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


def current_project(request: Request) -> Project:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    secret = token.strip() if scheme.lower() == "bearer" else None
    return services(request).access.authenticate(secret)
