"""The catalogue of definitions workers registered (what the API accepts).

Statements over a caller's connection: they flush, never commit (the service owns every
transaction), and state changes are single conditional statements, never read-modify-write.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from runs.domain.definitions import Definition
from runs.persistence.tables import definitions


def upsert_definitions(conn: sa.Connection, items: Iterable[Definition], now: datetime) -> None:
    for item in items:
        values = {
            "kind": item.kind,
            "name": item.name,
            "description": item.description,
            "input_schema": item.input_schema,
            "output_schema": item.output_schema,
            "updated_at": now,
        }
        updated = conn.execute(
            definitions.update().where(definitions.c.target == item.target).values(**values)
        )
        if updated.rowcount == 0:
            conn.execute(definitions.insert().values(target=item.target, **values))


def known_targets(conn: sa.Connection) -> set[str]:
    return set(conn.execute(sa.select(definitions.c.target)).scalars())


def list_definitions(conn: sa.Connection) -> list[Definition]:
    rows = conn.execute(definitions.select().order_by(definitions.c.target)).mappings()
    return [
        Definition(
            target=r["target"],
            kind=r["kind"],
            name=r["name"],
            description=r["description"],
            input_schema=r["input_schema"],
            output_schema=r["output_schema"],
        )
        for r in rows
    ]
