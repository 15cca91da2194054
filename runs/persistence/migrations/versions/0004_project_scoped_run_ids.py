"""run ids are unique inside their project: runs, run_events and workflow_nodes are keyed by
(project_id, run_id)

Existing rows are carried over: events and nodes take the project of their run. The downgrade
works while no run id is used in two projects (the old key cannot hold such runs).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHILDREN = ("run_events", "workflow_nodes")
CHILD_KEYS = {"run_events": "event_id", "workflow_nodes": "node_id"}


def upgrade() -> None:
    # Children first lose their foreign key to runs and gain the run's project.
    for table in CHILDREN:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_run_id_runs", type_="foreignkey")
            batch.add_column(sa.Column("project_id", sa.String(length=36), nullable=True))
        op.execute(
            f"UPDATE {table} SET project_id = "
            f"(SELECT runs.project_id FROM runs WHERE runs.run_id = {table}.run_id)"
        )
        # Rows whose run is gone would have been deleted by the cascade: drop them now.
        op.execute(f"DELETE FROM {table} WHERE project_id IS NULL")
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("pk_runs", type_="primary")
        batch.create_primary_key("pk_runs", ["project_id", "run_id"])
        batch.drop_index("ix_runs_parent")
        batch.create_index("ix_runs_parent", ["project_id", "parent_run_id"])
    for table in CHILDREN:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("project_id", existing_type=sa.String(length=36), nullable=False)
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", ["project_id", "run_id", CHILD_KEYS[table]])
            batch.create_foreign_key(
                f"fk_{table}_project_id_runs",
                "runs",
                ["project_id", "run_id"],
                ["project_id", "run_id"],
                ondelete="CASCADE",
            )


def downgrade() -> None:
    for table in CHILDREN:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_project_id_runs", type_="foreignkey")
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", ["run_id", CHILD_KEYS[table]])
            batch.drop_column("project_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_parent")
        batch.create_index("ix_runs_parent", ["parent_run_id"])
        batch.drop_constraint("pk_runs", type_="primary")
        batch.create_primary_key("pk_runs", ["run_id"])
    for table in CHILDREN:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(
                f"fk_{table}_run_id_runs", "runs", ["run_id"], ["run_id"], ondelete="CASCADE"
            )
