"""Run records: insert, read and list them. Their state changes (claim, finish, cancel) are
``runs.persistence.transitions``.

Statements over a caller's connection: they flush, never commit (the service owns every
transaction), and state changes are single conditional statements, never read-modify-write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from runs.domain.runs import (
    ACTIVE_STATUSES,
    AttemptRecord,
    Run,
    RunError,
    RunKind,
    RunRef,
    RunStatus,
)
from runs.persistence.event_archive import of_run
from runs.persistence.tables import (
    JSONType,
    before_in_listing,
    is_one_of,
    json_recordset,
    json_row,
    runs,
)

_RUN_COLUMNS = tuple(c for c in runs.c)


@dataclass(frozen=True, slots=True)
class RunFilters:
    statuses: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    parent_run_id: str | None = None
    schedule_id: str | None = None
    root_only: bool = False


def run_from_row(row: Mapping[Any, Any]) -> Run:
    data = dict(row)
    for key in ("lease_owner", "lease_expires_at"):
        data.pop(key, None)
    data["kind"] = RunKind(data["kind"])
    data["status"] = RunStatus(data["status"])
    data["artifacts"] = data.get("artifacts") or []
    data["error"] = RunError.from_json(data.get("error"))
    data["attempts"] = tuple(AttemptRecord.from_json(a) for a in data.get("attempts") or ())
    return Run(**data)


# What a new run's row holds; the rest of its columns keep their defaults.
_NEW_RUN_COLUMNS = (
    "run_id",
    "project_id",
    "owner_kind",
    "owner_id",
    "parent_run_id",
    "root_run_id",
    "name",
    "metadata",
    "target",
    "workflow_id",
    "schedule_id",
    "batch_id",
    "runtime_target_kind",
    "runtime_target_environment_id",
    "runtime_target_branch_id",
    "input",
    "config",
    "artifacts",
    "start_mode",
    "timeout_seconds",
    "backoff_limit",
    "trigger_kind",
    "trigger_id",
    "queue",
    "attempt",
    "created_at",
    "updated_at",
    "available_at",
)


def row_of(run: Run) -> dict[str, Any]:
    """The row of a new run (``runs.services.creation`` prepares it)."""
    row = {name: getattr(run, name) for name in _NEW_RUN_COLUMNS}
    return row | {"kind": run.kind.value, "status": run.status.value}


# New runs inserted together, skipping those whose id is taken; the statement names the runs
# it inserted. On SQLite, one VALUES row a run (SQLAlchemy's "insertmanyvalues").
_INSERT_NEW_SQLITE = (
    sqlite.insert(runs)
    .on_conflict_do_nothing(index_elements=[runs.c.project_id, runs.c.run_id])
    .returning(runs.c.project_id, runs.c.run_id)
)

# On PostgreSQL, the hot path's statement: the same insert with the rows in one JSON
# parameter, so that its text is the same whatever the number of runs (the driver converts
# it once and the server plans it once, as a prepared statement). JSON ``null`` is stored as
# its twin stores ``None``: as JSON ``null``, not SQL NULL.
_INSERTED_COLUMNS = ("kind", "status", *_NEW_RUN_COLUMNS)
_NEW_ROWS = json_recordset("b_rows", (runs.c[name] for name in _INSERTED_COLUMNS), "r")
_JSON_NULL: sa.ColumnElement[Any] = sa.literal_column("'null'::jsonb")
_INSERT_NEW_POSTGRES = (
    postgresql.insert(runs)
    .from_select(
        list(_INSERTED_COLUMNS),
        sa.select(
            *(
                sa.func.coalesce(_NEW_ROWS.c[name], _JSON_NULL)
                if runs.c[name].type is JSONType
                else _NEW_ROWS.c[name]
                for name in _INSERTED_COLUMNS
            )
        ),
    )
    .on_conflict_do_nothing(index_elements=[runs.c.project_id, runs.c.run_id])
    .returning(runs.c.project_id, runs.c.run_id)
)


def insert_runs(conn: sa.Connection, new: Sequence[Run]) -> set[RunRef]:
    """Insert new runs in one statement; a run whose id its project already holds is skipped.
    Returns the runs inserted. Raises ``sqlalchemy.exc.IntegrityError`` (and inserts none)
    on any other conflict, such as a project deleted meanwhile."""
    if not new:
        return set()
    if conn.dialect.name == "postgresql":
        rows = [json_row(row_of(run)) for run in new]
        found = conn.execute(_INSERT_NEW_POSTGRES, {"b_rows": rows})
    else:
        found = conn.execute(_INSERT_NEW_SQLITE, [row_of(run) for run in new])
    return {RunRef(project_id, run_id) for project_id, run_id in found}


def get_run(conn: sa.Connection, ref: RunRef) -> Run | None:
    row = conn.execute(runs.select().where(of_run(runs, ref))).mappings().first()
    return run_from_row(row) if row is not None else None


def list_runs(
    conn: sa.Connection,
    project_id: str,
    filters: RunFilters,
    *,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[Run]:
    """Runs of a project, newest first (``created_at`` then ``run_id`` descending)."""
    query = runs.select().where(runs.c.project_id == project_id)
    if filters.statuses:
        # Constants, so that the planner can prove a filter of statuses other than
        # "completed" matches ix_runs_project_status (whose condition also needs the second).
        query = query.where(is_one_of(runs.c.status, filters.statuses))
        query = query.where(runs.c.created_at.is_not(None))
    if filters.kinds:
        query = query.where(runs.c.kind.in_(filters.kinds))
    if filters.targets:
        query = query.where(runs.c.target.in_(filters.targets))
    if filters.parent_run_id is not None:
        query = query.where(runs.c.parent_run_id == filters.parent_run_id)
    if filters.schedule_id is not None:
        query = query.where(runs.c.schedule_id == filters.schedule_id)
    if filters.root_only:
        query = query.where(runs.c.parent_run_id.is_(None))
    if before is not None:
        query = query.where(before_in_listing(runs.c.created_at, runs.c.run_id, before))
    query = query.order_by(runs.c.created_at.desc(), runs.c.run_id.desc()).limit(limit)
    return [run_from_row(r) for r in conn.execute(query).mappings()]


def active_children(conn: sa.Connection, ref: RunRef) -> list[str]:
    """Ids of the runs started by ``ref`` (always in its project) that have not ended."""
    return list(
        conn.execute(
            sa.select(runs.c.run_id).where(
                runs.c.project_id == ref.project_id,
                runs.c.parent_run_id == ref.run_id,
                runs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
            )
        ).scalars()
    )


# -- how many runs are in each active status now -------------------------------------------
# Read from partial indexes only: the indexes hold the few rows they serve, so the counts cost
# as much as there are active runs, whatever the table's size: pending runs from
# ``ix_runs_pending`` (every pending run has ``available_at``), running and waiting ones from
# ``ix_runs_leased`` (a claimed run keeps its lease until it ends). Terminal statuses are not
# counted here: their number only grows (``runs_finished_total`` counts them as they happen).

COUNTED = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)

_COUNTS = sa.union_all(
    sa.select(sa.literal(RunStatus.PENDING.value).label("status"), sa.func.count()).where(
        runs.c.status == RunStatus.PENDING.value, runs.c.available_at.is_not(None)
    ),
    sa.select(runs.c.status, sa.func.count())
    .where(
        runs.c.lease_expires_at.is_not(None),
        runs.c.status.in_([RunStatus.RUNNING.value, RunStatus.WAITING.value]),
    )
    .group_by(runs.c.status),
)


def active_counts(conn: sa.Connection) -> dict[RunStatus, int]:
    """Runs per active status (0 for a status no run has), in one statement."""
    counts = dict.fromkeys(COUNTED, 0)
    for status, count in conn.execute(_COUNTS):
        counts[RunStatus(status)] = int(count)
    return counts
