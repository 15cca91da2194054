"""Small builders shared by tests."""

from __future__ import annotations

from typing import Any

from runs.domain.projects import Project
from runs.domain.runs import RunKind, RunRequest


def task_request(project: Project, target: str = "task:echo", **changes: Any) -> RunRequest:
    fields: dict[str, Any] = {
        "kind": RunKind.TASK,
        "owner_kind": "project",
        "owner_id": project.id,
        "target": target,
        "config": {"hello": "world"},
    }
    fields.update(changes)
    return RunRequest(**fields)


def create_body(project: Project, target: str = "task:echo", **request: Any) -> dict[str, Any]:
    """A POST /runs body as the official client sends it."""
    return {
        "kind": "task",
        "owner": {"kind": "project", "id": project.id},
        "request": {"target": target, "config": {"hello": "world"}, **request},
    }
