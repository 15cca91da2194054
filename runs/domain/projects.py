"""Projects (the walls between tenants) and their API tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from runs.domain.errors import InvalidRequest

SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")
TOKEN_PREFIX = "runs_"


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    slug: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: str
    project_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


def check_slug(slug: str) -> str:
    if not SLUG_PATTERN.fullmatch(slug):
        raise InvalidRequest(
            f"slug {slug!r} must be 1-100 lowercase letters, digits and inner hyphens",
            field="slug",
        )
    return slug


def new_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    """Tokens are stored only as this hash; the secret is shown once, at creation."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()
