"""JSON columns are TEXT on SQLite (a column declared JSON has NUMERIC affinity there, which
turns a stored bare number into a number and rounds integers past 64 bits); PostgreSQL keeps
JSONB and is not touched.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00.000000
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON_COLUMNS = {
    "definitions": ("input_schema", "output_schema"),
    "runs": ("metadata", "input", "config", "output", "error", "artifacts", "attempts"),
    "run_events": ("payload",),
    "workflow_nodes": ("output", "error"),
}


def _retype(to: sa.types.TypeEngine[Any], existing: sa.types.TypeEngine[Any]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, columns in JSON_COLUMNS.items():
        with op.batch_alter_table(table, recreate="always") as batch:
            for column in columns:
                batch.alter_column(column, type_=to, existing_type=existing)


def upgrade() -> None:
    _retype(sa.Text(), sa.JSON())


def downgrade() -> None:
    _retype(sa.JSON(), sa.Text())
