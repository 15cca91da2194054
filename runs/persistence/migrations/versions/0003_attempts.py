"""attempts, availability and stop times of runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("attempts", JSON, nullable=True))
        batch.add_column(sa.Column("available_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempt_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("cancel_stopped_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE runs SET available_at = updated_at WHERE status = 'pending'")
    op.create_index("ix_runs_status_available", "runs", ["status", "available_at"])
    op.create_index("ix_runs_status_lease", "runs", ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_lease", table_name="runs")
    op.drop_index("ix_runs_status_available", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("cancel_stopped_at")
        batch.drop_column("attempt_started_at")
        batch.drop_column("available_at")
        batch.drop_column("attempts")
