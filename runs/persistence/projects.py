"""Projects and their API tokens (stored as hashes only).

Statements over a caller's connection: they flush, never commit (the service owns every
transaction), and state changes are single conditional statements, never read-modify-write.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from runs.domain.projects import ApiToken, Project
from runs.persistence.tables import api_tokens, projects


def _project_from_row(row: Mapping[Any, Any]) -> Project:
    return Project(id=row["id"], slug=row["slug"], name=row["name"], created_at=row["created_at"])


def insert_project(conn: sa.Connection, project: Project) -> None:
    conn.execute(
        projects.insert().values(
            id=project.id, slug=project.slug, name=project.name, created_at=project.created_at
        )
    )


def find_project(conn: sa.Connection, reference: str) -> Project | None:
    """Resolve a project by UUID first, then by slug."""
    try:
        by_id: str | None = str(uuid.UUID(reference))
    except ValueError:
        by_id = None
    if by_id is not None:
        row = conn.execute(projects.select().where(projects.c.id == by_id)).mappings().first()
        if row is not None:
            return _project_from_row(row)
    row = conn.execute(projects.select().where(projects.c.slug == reference)).mappings().first()
    return _project_from_row(row) if row is not None else None


def list_projects(conn: sa.Connection) -> list[Project]:
    rows = conn.execute(projects.select().order_by(projects.c.created_at)).mappings()
    return [_project_from_row(r) for r in rows]


def insert_token(conn: sa.Connection, token: ApiToken, token_hash: str) -> None:
    conn.execute(
        api_tokens.insert().values(
            id=token.id,
            project_id=token.project_id,
            name=token.name,
            token_hash=token_hash,
            created_at=token.created_at,
        )
    )


def project_for_token(conn: sa.Connection, token_hash: str) -> Project | None:
    row = (
        conn.execute(
            sa.select(projects)
            .join(api_tokens, api_tokens.c.project_id == projects.c.id)
            .where(api_tokens.c.token_hash == token_hash, api_tokens.c.revoked_at.is_(None))
        )
        .mappings()
        .first()
    )
    return _project_from_row(row) if row is not None else None


def list_tokens(conn: sa.Connection, project_id: str) -> list[ApiToken]:
    rows = conn.execute(
        api_tokens.select()
        .where(api_tokens.c.project_id == project_id)
        .order_by(api_tokens.c.created_at)
    ).mappings()
    return [
        ApiToken(
            id=r["id"],
            project_id=r["project_id"],
            name=r["name"],
            created_at=r["created_at"],
            revoked_at=r["revoked_at"],
        )
        for r in rows
    ]


def revoke_token(conn: sa.Connection, token_id: str, now: datetime) -> bool:
    result = conn.execute(
        api_tokens.update()
        .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return result.rowcount == 1
