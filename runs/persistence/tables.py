"""Table definitions (SQLAlchemy Core). Alembic migrations must equal these."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from runs.persistence.json_text import loads_storable


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Stores UTC timestamps; always hands back timezone-aware UTC datetimes (SQLite included)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass a UTC-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SQLiteJSON(sa.TypeDecorator[Any]):
    """JSON kept as TEXT on SQLite. A column declared ``JSON`` has NUMERIC affinity there, so
    SQLite turns a stored document that is a bare number into a number of its own, and an
    integer past 64 bits comes back as a rounded float."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        # Rows written before this type may hold a number SQLite converted already; rows
        # written before values were checked may hold what cannot be encoded (SQLite keeps
        # what PostgreSQL refuses).
        return loads_storable(value) if isinstance(value, str) else value


def before_in_listing(
    created_at: sa.ColumnElement[datetime],
    key: sa.ColumnElement[str],
    before: tuple[datetime, str],
) -> sa.ColumnElement[bool]:
    """Rows after ``before`` in a listing ordered by (created_at, key) descending: the keyset
    condition of a page's cursor."""
    moment, last = before
    return sa.or_(created_at < moment, sa.and_(created_at == moment, key < last))


def is_one_of(column: sa.ColumnElement[str], values: Iterable[str]) -> sa.ColumnElement[bool]:
    """``column IN (...)`` of constants written into the SQL: an expanding parameter would be
    rendered again on every execution."""
    return column.in_([sa.literal_column(f"'{value}'") for value in values])


JSONType: sa.types.TypeEngine[Any] = (
    sa.JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(SQLiteJSON(), "sqlite")
)


def _partial(name: str, columns: list[str], where: str) -> sa.Index:
    condition = sa.text(where)
    return sa.Index(name, *columns, postgresql_where=condition, sqlite_where=condition)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("slug", sa.String(100), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "project_id",
        sa.String(36),
        sa.ForeignKey("projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

# What the workers have registered: the API accepts runs only for known targets.
definitions = sa.Table(
    "definitions",
    metadata,
    sa.Column("target", sa.String(210), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("input_schema", JSONType, nullable=True),
    sa.Column("output_schema", JSONType, nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# A run id is unique inside its project only: the key is (project_id, run_id).
runs = sa.Table(
    "runs",
    metadata,
    sa.Column(
        "project_id",
        sa.String(36),
        sa.ForeignKey("projects.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("owner_kind", sa.String(16), nullable=False),
    sa.Column("owner_id", sa.String(128), nullable=False),
    sa.Column("parent_run_id", sa.String(128), nullable=True),
    sa.Column("root_run_id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(500), nullable=True),
    sa.Column("waiting_reason", sa.Text(), nullable=True),
    sa.Column("metadata", JSONType, nullable=True),
    sa.Column("target", sa.String(210), nullable=False),
    sa.Column("workflow_id", sa.String(200), nullable=True),
    sa.Column("schedule_id", sa.String(128), nullable=True),
    sa.Column("batch_id", sa.String(200), nullable=True),
    sa.Column("runtime_target_kind", sa.String(32), nullable=True),
    sa.Column("runtime_target_environment_id", sa.String(200), nullable=True),
    sa.Column("runtime_target_branch_id", sa.String(200), nullable=True),
    sa.Column("input", JSONType, nullable=True),
    sa.Column("config", JSONType, nullable=True),
    sa.Column("output", JSONType, nullable=True),
    sa.Column("error", JSONType, nullable=True),
    sa.Column("logs", sa.Text(), nullable=True),
    sa.Column("artifacts", JSONType, nullable=False),
    sa.Column("duration_ms", sa.BigInteger(), nullable=True),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("start_mode", sa.String(64), nullable=True),
    sa.Column("timeout_seconds", sa.Integer(), nullable=True),
    sa.Column("backoff_limit", sa.Integer(), nullable=True),
    sa.Column("trigger_kind", sa.String(16), nullable=True),
    sa.Column("trigger_id", sa.String(200), nullable=True),
    sa.Column("created_by", sa.String(200), nullable=True),
    sa.Column("queue", sa.String(200), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    sa.Column("cancel_requested_at", UTCDateTime(), nullable=True),
    # When the cancelled work actually stopped (the worker confirmed it, or its lease ran out).
    sa.Column("cancel_stopped_at", UTCDateTime(), nullable=True),
    # One record per ended attempt: number, status, error, started/finished times.
    sa.Column("attempts", JSONType, nullable=True),
    # When a pending run became runnable (accepted, or due after a retry's backoff).
    sa.Column("available_at", UTCDateTime(), nullable=True),
    sa.Column("attempt_started_at", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("completed_at", UTCDateTime(), nullable=True),
    # Listing, newest first. The other indexes are partial, on the few rows they serve: every
    # change of a row writes an entry in each index whose condition the row meets. No
    # statement that names a run by its key may imply a partial index's condition, or the
    # planner may scan that index instead of the key on a table it has no statistics of
    # yet (hence "available_at IS NOT NULL", which a claim's condition does not imply).
    sa.Index("ix_runs_project_created", "project_id", "created_at", "run_id"),
    _partial("ix_runs_parent", ["project_id", "parent_run_id"], "parent_run_id IS NOT NULL"),
    # Listing by status: runs that did not complete (the statuses a filter looks for when few
    # runs have them), so that finishing a run as completed writes nothing here.
    _partial(
        "ix_runs_project_status",
        ["project_id", "status", "created_at", "run_id"],
        "status <> 'completed' AND created_at IS NOT NULL",
    ),
    _partial(
        "ix_runs_pending", ["available_at"], "status = 'pending' AND available_at IS NOT NULL"
    ),
    _partial("ix_runs_leased", ["lease_expires_at"], "lease_expires_at IS NOT NULL"),
    # Retention: finished runs, oldest first.
    _partial("ix_runs_completed", ["completed_at"], "completed_at IS NOT NULL"),
    # Runs a schedule created: its runs newest first (the list's filter), and the ones not
    # ended yet (what Forbid and Replace look for).
    _partial(
        "ix_runs_project_schedule",
        ["project_id", "schedule_id", "created_at", "run_id"],
        "schedule_id IS NOT NULL",
    ),
    _partial(
        "ix_runs_schedule_active",
        ["project_id", "schedule_id"],
        "schedule_id IS NOT NULL AND status IN ('pending', 'running', 'waiting')",
    ),
)

# Events of finished runs, copied from the Redis stream in the run's terminal transaction.
run_events = sa.Table(
    "run_events",
    metadata,
    sa.Column("project_id", sa.String(36), primary_key=True),
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("event_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("event_type", sa.String(100), nullable=False),
    sa.Column("payload", JSONType, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(
        ["project_id", "run_id"], ["runs.project_id", "runs.run_id"], ondelete="CASCADE"
    ),
)

# The nodes of workflow runs: their state is the engine's only memory between jobs.
workflow_nodes = sa.Table(
    "workflow_nodes",
    metadata,
    sa.Column("project_id", sa.String(36), primary_key=True),
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("node_id", sa.String(200), primary_key=True),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("arm", sa.String(16), nullable=True),
    sa.Column("output", JSONType, nullable=True),
    sa.Column("error", JSONType, nullable=True),
    sa.Column("logs", sa.Text(), nullable=True),
    sa.Column("wait_event", sa.String(200), nullable=True),
    sa.Column("deadline", UTCDateTime(), nullable=True),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("completed_at", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(
        ["project_id", "run_id"], ["runs.project_id", "runs.run_id"], ondelete="CASCADE"
    ),
    # The sweeper's look for steps left queued, or running on a lapsed lease ("updated_at IS
    # NOT NULL": a node's claim must not imply the condition, see runs above).
    _partial(
        "ix_workflow_nodes_live",
        ["updated_at"],
        "status IN ('queued', 'running') AND updated_at IS NOT NULL",
    ),
)

# Definitions that create runs later: a cron expression, an interval or one time.
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "project_id",
        sa.String(36),
        sa.ForeignKey("projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("target", sa.String(210), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("cron", sa.String(200), nullable=True),
    sa.Column("interval_seconds", sa.Integer(), nullable=True),
    sa.Column("run_at", UTCDateTime(), nullable=True),
    sa.Column("input", JSONType, nullable=True),
    sa.Column("config", JSONType, nullable=True),
    sa.Column("timeout_seconds", sa.Integer(), nullable=True),
    sa.Column("backoff_limit", sa.Integer(), nullable=True),
    sa.Column("concurrency_policy", sa.String(16), nullable=False),
    sa.Column("max_runs", sa.Integer(), nullable=True),
    sa.Column("catchup", sa.String(16), nullable=False),
    sa.Column("catchup_window_seconds", sa.Integer(), nullable=True),
    # The next occurrence not yet fired; null once none is left (or while paused it keeps
    # the one that was due, so that resuming applies the catch-up policy to the gap).
    sa.Column("next_run_at", UTCDateTime(), nullable=True),
    sa.Column("last_scheduled_at", UTCDateTime(), nullable=True),
    sa.Column("last_successful_at", UTCDateTime(), nullable=True),
    sa.Column("last_failure_at", UTCDateTime(), nullable=True),
    sa.Column("last_failure_code", sa.String(64), nullable=True),
    sa.Column("last_failure_message", sa.Text(), nullable=True),
    sa.Column("last_failure_run_id", sa.String(128), nullable=True),
    sa.Column("run_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("skipped_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("paused_reason", sa.Text(), nullable=True),
    sa.Column("paused_at", UTCDateTime(), nullable=True),
    sa.Column("completed_at", UTCDateTime(), nullable=True),
    sa.Column("definition_source", sa.String(16), nullable=False),
    sa.Column("source_trigger_id", sa.String(200), nullable=True),
    sa.Column("source_path", sa.String(500), nullable=True),
    sa.Column("source_hash", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # The API's list, newest first.
    sa.Index("ix_schedules_project_created", "project_id", "created_at", "id"),
    # A source-defined schedule is one per project and id in the code.
    sa.Index("ix_schedules_source", "project_id", "source_trigger_id", unique=True),
    # What the scheduler looks for: active schedules by their next occurrence.
    _partial("ix_schedules_due", ["next_run_at"], "status = 'active' AND next_run_at IS NOT NULL"),
)

# One row per occurrence fired (or skipped) and per trigger: (schedule, scheduled_for) and
# (schedule, idempotency key) are unique, so that two schedulers racing for an occurrence, or a
# trigger sent twice, create one run. ``settled`` turns true once the run ended and the
# schedule's last success or failure was brought up to date.
schedule_firings = sa.Table(
    "schedule_firings",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column(
        "schedule_id",
        sa.String(64),
        sa.ForeignKey("schedules.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("project_id", sa.String(36), nullable=False),
    sa.Column("scheduled_for", UTCDateTime(), nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(128), nullable=True),
    sa.Column("settled", sa.Boolean(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("schedule_id", "scheduled_for"),
    sa.UniqueConstraint("schedule_id", "idempotency_key"),
    _partial("ix_schedule_firings_unsettled", ["created_at"], "NOT settled"),
)


# Rows passed as one JSON parameter and read back with ``jsonb_to_recordset``: the hot path's
# statements on PostgreSQL, whose text stays the same whatever the number of rows.


def recordset_type(column: sa.Column[Any]) -> sa.types.TypeEngine[Any]:
    """The type a column's value is read as from a JSON row."""
    if column.type is JSONType:
        return postgresql.JSONB()
    if isinstance(column.type, UTCDateTime):
        return sa.DateTime(timezone=True)
    return column.type


def json_recordset(parameter: str, columns: Iterable[sa.Column[Any]], name: str) -> Any:
    """``jsonb_to_recordset(:parameter) AS name(column type, ...)``: the rows of one JSON
    parameter (``json_row`` each) as a table with the named columns' types."""
    return (
        sa.func.jsonb_to_recordset(sa.bindparam(parameter, type_=postgresql.JSONB()))
        .table_valued(*(sa.column(c.name, recordset_type(c)) for c in columns))
        .render_derived(name=name, with_types=True)
    )


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as JSON carries them: times as ISO 8601 text (UTC-aware only)."""
    return {name: _json_value(value) for name, value in row.items()}


def _json_value(value: Any) -> Any:
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored; pass a UTC-aware datetime")
    return value.isoformat()
