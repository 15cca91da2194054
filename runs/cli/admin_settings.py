"""Where the admin commands find the database when RUNS_DATABASE_URL is not set: the
``.runs/runs.db`` that ``runs dev`` made, in this folder or the nearest parent (as a project's
tools find their configuration), never a new empty one. Its Redis (the broker that jobs go
to) is the one ``runs dev`` wrote beside it, in ``.runs/dev.json``, unless RUNS_REDIS_URL says
otherwise: a run an admin command starts is sent to the workers of that ``runs dev``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from runs.domain.errors import InvalidRequest
from runs.settings import Settings

DEV_DATABASE = Path(".runs") / "runs.db"
DEV_INFO = "dev.json"


def admin_settings() -> Settings:
    """Settings for a command that works on an existing database."""
    settings = Settings()
    if (
        "RUNS_DATABASE_URL" in os.environ
        or settings.database_url != Settings.model_fields["database_url"].default
    ):
        return settings
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        candidate = folder / DEV_DATABASE
        if candidate.is_file():
            update: dict[str, str | None] = {"database_url": f"sqlite:///{candidate}"}
            redis_url = _dev_redis(candidate.with_name(DEV_INFO))
            if redis_url and "RUNS_REDIS_URL" not in os.environ:
                update |= {"redis_url": redis_url, "broker_url": None}
            return settings.model_copy(update=update)
    raise InvalidRequest(
        f"no database here: no {DEV_DATABASE} in {here} or its parents; run this in the "
        "project folder where `runs dev` ran, or set RUNS_DATABASE_URL",
        field="RUNS_DATABASE_URL",
    )


def _dev_redis(info: Path) -> str | None:
    """The Redis of the ``runs dev`` that wrote ``info``, if it says."""
    try:
        found = json.loads(info.read_text()).get("redis_url")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None
