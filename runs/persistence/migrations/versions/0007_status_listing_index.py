"""an index for listing a project's runs by a status other than completed (a filter for a
status few runs have would otherwise read the project's runs newest first until it found a
page)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    condition = sa.text("status <> 'completed' AND created_at IS NOT NULL")
    op.create_index(
        "ix_runs_project_status",
        "runs",
        ["project_id", "status", "created_at", "run_id"],
        postgresql_where=condition,
        sqlite_where=condition,
    )


def downgrade() -> None:
    op.drop_index("ix_runs_project_status", table_name="runs")
