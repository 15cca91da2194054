"""schedules and their firings (one row per occurrence or trigger, unique per schedule), and
the indexes on runs that a schedule's runs are found by

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(sa.Text(), "sqlite")
TIME = sa.DateTime(timezone=True)


def _partial(name: str, table: str, columns: list[str], where: str) -> None:
    condition = sa.text(where)
    op.create_index(name, table, columns, postgresql_where=condition, sqlite_where=condition)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("target", sa.String(210), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("interval_seconds", sa.Integer(), nullable=True),
        sa.Column("run_at", TIME, nullable=True),
        sa.Column("input", JSON, nullable=True),
        sa.Column("config", JSON, nullable=True),
        sa.Column("timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("backoff_limit", sa.Integer(), nullable=True),
        sa.Column("concurrency_policy", sa.String(16), nullable=False),
        sa.Column("max_runs", sa.Integer(), nullable=True),
        sa.Column("catchup", sa.String(16), nullable=False),
        sa.Column("catchup_window_seconds", sa.Integer(), nullable=True),
        sa.Column("next_run_at", TIME, nullable=True),
        sa.Column("last_scheduled_at", TIME, nullable=True),
        sa.Column("last_successful_at", TIME, nullable=True),
        sa.Column("last_failure_at", TIME, nullable=True),
        sa.Column("last_failure_code", sa.String(64), nullable=True),
        sa.Column("last_failure_message", sa.Text(), nullable=True),
        sa.Column("last_failure_run_id", sa.String(128), nullable=True),
        sa.Column("run_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("skipped_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("paused_reason", sa.Text(), nullable=True),
        sa.Column("paused_at", TIME, nullable=True),
        sa.Column("completed_at", TIME, nullable=True),
        sa.Column("definition_source", sa.String(16), nullable=False),
        sa.Column("source_trigger_id", sa.String(200), nullable=True),
        sa.Column("source_path", sa.String(500), nullable=True),
        sa.Column("source_hash", sa.String(64), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name="fk_schedules_project_id_projects",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
    )
    op.create_index("ix_schedules_project_created", "schedules", ["project_id", "created_at", "id"])
    op.create_index(
        "ix_schedules_source", "schedules", ["project_id", "source_trigger_id"], unique=True
    )
    _partial(
        "ix_schedules_due",
        "schedules",
        ["next_run_at"],
        "status = 'active' AND next_run_at IS NOT NULL",
    )
    op.create_table(
        "schedule_firings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("schedule_id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("scheduled_for", TIME, nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=True),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name="fk_schedule_firings_schedule_id_schedules",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_schedule_firings"),
        sa.UniqueConstraint(
            "schedule_id", "scheduled_for", name="uq_schedule_firings_schedule_id_scheduled_for"
        ),
        sa.UniqueConstraint(
            "schedule_id",
            "idempotency_key",
            name="uq_schedule_firings_schedule_id_idempotency_key",
        ),
    )
    _partial("ix_schedule_firings_unsettled", "schedule_firings", ["created_at"], "NOT settled")
    _partial(
        "ix_runs_project_schedule",
        "runs",
        ["project_id", "schedule_id", "created_at", "run_id"],
        "schedule_id IS NOT NULL",
    )
    _partial(
        "ix_runs_schedule_active",
        "runs",
        ["project_id", "schedule_id"],
        "schedule_id IS NOT NULL AND status IN ('pending', 'running', 'waiting')",
    )


def downgrade() -> None:
    op.drop_index("ix_runs_schedule_active", table_name="runs")
    op.drop_index("ix_runs_project_schedule", table_name="runs")
    op.drop_table("schedule_firings")
    op.drop_table("schedules")
