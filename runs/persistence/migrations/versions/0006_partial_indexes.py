"""partial indexes for the sweeper and for child runs: a change of a run writes entries only
in the indexes whose condition it meets, and a lookup by key implies no index's condition (on
a table never analyzed, the planner took the parent index and scanned a whole project)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

PARTIAL = (
    ("ix_runs_parent", "runs", ["project_id", "parent_run_id"], "parent_run_id IS NOT NULL"),
    (
        "ix_runs_pending",
        "runs",
        ["available_at"],
        "status = 'pending' AND available_at IS NOT NULL",
    ),
    ("ix_runs_leased", "runs", ["lease_expires_at"], "lease_expires_at IS NOT NULL"),
    (
        "ix_workflow_nodes_live",
        "workflow_nodes",
        ["updated_at"],
        "status IN ('queued', 'running') AND updated_at IS NOT NULL",
    ),
)
FULL = (
    ("ix_runs_parent", ["project_id", "parent_run_id"]),
    ("ix_runs_status_updated", ["status", "updated_at"]),
    ("ix_runs_status_available", ["status", "available_at"]),
    ("ix_runs_status_lease", ["status", "lease_expires_at"]),
)


def upgrade() -> None:
    for name, _ in FULL:
        op.drop_index(name, table_name="runs")
    for name, table, columns, where in PARTIAL:
        condition = sa.text(where)
        op.create_index(name, table, columns, postgresql_where=condition, sqlite_where=condition)


def downgrade() -> None:
    for name, table, _, _ in PARTIAL:
        op.drop_index(name, table_name=table)
    for name, columns in FULL:
        op.create_index(name, "runs", columns)
