"""Projects, API tokens and authentication. Tokens are stored hashed and scoped to one project."""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from runs.domain.clock import utcnow
from runs.domain.errors import Conflict, NotFound, Unauthenticated
from runs.domain.projects import ApiToken, Project, check_slug, hash_token, new_token_secret
from runs.persistence import projects
from runs.persistence.engine import autocommit


class AccessService:
    def __init__(self, engine: sa.Engine, *, cache_seconds: float = 0.0) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Project]] = {}

    def create_project(self, slug: str, name: str | None = None) -> Project:
        project = Project(
            id=str(uuid.uuid4()), slug=check_slug(slug), name=name or slug, created_at=utcnow()
        )
        try:
            with self._engine.begin() as conn:
                projects.insert_project(conn, project)
        except IntegrityError:
            raise Conflict(f"a project with slug {slug!r} exists already", field="slug") from None
        return project

    def find_project(self, reference: str) -> Project:
        with self._engine.connect() as conn:
            project = projects.find_project(conn, reference)
        if project is None:
            raise NotFound(f"project {reference!r} not found")
        return project

    def list_projects(self) -> list[Project]:
        with self._engine.connect() as conn:
            return projects.list_projects(conn)

    def create_token(self, project_reference: str, name: str = "default") -> tuple[ApiToken, str]:
        """Create a token; the secret is returned once and only its hash is stored."""
        project = self.find_project(project_reference)
        secret = new_token_secret()
        token = ApiToken(
            id=str(uuid.uuid4()), project_id=project.id, name=name, created_at=utcnow()
        )
        with self._engine.begin() as conn:
            projects.insert_token(conn, token, hash_token(secret))
        return token, secret

    def list_tokens(self, project_reference: str) -> list[ApiToken]:
        project = self.find_project(project_reference)
        with self._engine.connect() as conn:
            return projects.list_tokens(conn, project.id)

    def revoke_token(self, token_id: str) -> None:
        with self._engine.begin() as conn:
            if not projects.revoke_token(conn, token_id, utcnow()):
                raise NotFound(f"active token {token_id!r} not found")
        self._cache.clear()

    def cached(self, secret: str | None) -> Project | None:
        """The project of a token authenticated lately, without I/O; else None."""
        if not secret:
            return None
        cached = self._cache.get(hash_token(secret))
        if cached is not None and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        return None

    def authenticate(self, secret: str | None) -> Project:
        """The project a bearer token belongs to (cached briefly; revocation waits that long)."""
        if not secret:
            raise Unauthenticated("send 'Authorization: Bearer <token>' with a project API token")
        cached = self.cached(secret)
        if cached is not None:
            return cached
        digest = hash_token(secret)
        with autocommit(self._engine).connect() as conn:
            project = projects.project_for_token(conn, digest)
        if project is None:
            raise Unauthenticated(
                "the token is unknown or revoked; create one with `runs tokens create`"
            )
        if self._cache_seconds > 0:
            self._cache[digest] = (time.monotonic(), project)
        return project
