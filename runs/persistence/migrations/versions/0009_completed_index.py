"""an index of finished runs by completion time, for retention to find the oldest ones
without reading the whole table

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-20 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    condition = sa.text("completed_at IS NOT NULL")
    op.create_index(
        "ix_runs_completed",
        "runs",
        ["completed_at"],
        postgresql_where=condition,
        sqlite_where=condition,
    )


def downgrade() -> None:
    op.drop_index("ix_runs_completed", table_name="runs")
