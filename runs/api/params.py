"""What the routes share: their dependencies, path and query parameters, and paging."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Path, Query
from pydantic import StringConstraints

from runs.api.deps import Services, current_project, services
from runs.domain.errors import InvalidRequest, NotFound
from runs.domain.projects import Project
from runs.domain.runs import DEFINITION_ID_PATTERN, RunKind

ProjectDep = Annotated[Project, Depends(current_project)]
ServicesDep = Annotated[Services, Depends(services)]


def listing(value: str) -> str:
    """A pattern for one ``value`` or several, comma-separated."""
    return rf"^{value}(?:,{value})*$"


def one_of(values: Iterable[str]) -> str:
    return "(?:" + "|".join(sorted(values)) + ")"


TARGET = one_of(k.value for k in RunKind) + ":" + DEFINITION_ID_PATTERN.pattern.strip("^$")
# Bounded so that any valid request fits the server's URL limit (RUNS_HTTP_MAX_URL_BYTES).
TargetFilter = Annotated[str, StringConstraints(max_length=500, pattern=listing(TARGET))]
ProjectPath = Annotated[str, Path(max_length=100, description="the project's id or slug")]
CURSOR_PATTERN = "^[A-Za-z0-9_-]+$"
CursorQuery = Annotated[
    str | None, Query(max_length=400, pattern=CURSOR_PATTERN, description="page_info.next")
]

FILTER = "one value or several, comma-separated and/or repeated (OR within, AND across)"

# What every route of a project's resources can answer besides its success.
AUTHENTICATED = (401, 500)


def page_size(svc: Services, limit: int | None) -> int:
    if limit is None:
        return svc.settings.default_page_size
    if limit > svc.settings.max_page_size:
        raise InvalidRequest(
            f"limit must be between 1 and {svc.settings.max_page_size}", field="limit"
        )
    return limit


def split(values: list[str] | None) -> tuple[str, ...]:
    """Filters may be comma-separated and/or repeated."""
    return tuple(v for raw in values or () for v in raw.split(","))


def referenced(reference: str, project: Project) -> Project:
    """The caller's project, when the path's ``{project_reference}`` names it (id or slug);
    any other reference is not found."""
    if reference not in (project.id, project.slug):
        raise NotFound(f"project {reference!r} not found")
    return project
