"""The events of finished runs, copied from their Redis stream when the run ends.

Statements over a caller's connection: they flush, never commit (the service owns every
transaction), and state changes are single conditional statements, never read-modify-write.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from runs.domain.events import RunEvent
from runs.domain.runs import RunRef
from runs.domain.text import storable
from runs.persistence.tables import run_events


def of_run(table: sa.Table, ref: RunRef) -> sa.ColumnElement[bool]:
    """The rows of one run in ``table`` (``runs`` or a table keyed by the run)."""
    return sa.and_(table.c.project_id == ref.project_id, table.c.run_id == ref.run_id)


def insert_events(conn: sa.Connection, ref: RunRef, events: Sequence[RunEvent]) -> None:
    if not events:
        return
    conn.execute(
        run_events.insert(),
        [
            {
                "project_id": ref.project_id,
                "run_id": ref.run_id,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "payload": storable(e.payload),
                "created_at": e.created_at,
            }
            for e in events
        ],
    )


def list_events(conn: sa.Connection, ref: RunRef, *, after: int, limit: int) -> list[RunEvent]:
    rows = conn.execute(
        sa.select(
            run_events.c.event_id,
            run_events.c.event_type,
            run_events.c.payload,
            run_events.c.created_at,
        )
        .where(of_run(run_events, ref), run_events.c.event_id > after)
        .order_by(run_events.c.event_id)
        .limit(limit)
    )
    return [
        RunEvent(
            event_id=r.event_id, event_type=r.event_type, payload=r.payload, created_at=r.created_at
        )
        for r in rows
    ]
