"""Where the admin commands find the database when RUNS_DATABASE_URL is not set: the
``.runs/runs.db`` that ``runs dev`` made, in this folder or the nearest parent (as a project's
tools find their configuration), never a new empty one."""

from __future__ import annotations

import os
from pathlib import Path

from runs.domain.errors import InvalidRequest
from runs.settings import Settings

DEV_DATABASE = Path(".runs") / "runs.db"


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
            return settings.model_copy(update={"database_url": f"sqlite:///{candidate}"})
    raise InvalidRequest(
        f"no database here: no {DEV_DATABASE} in {here} or its parents; run this in the "
        "project folder where `runs dev` ran, or set RUNS_DATABASE_URL",
        field="RUNS_DATABASE_URL",
    )
