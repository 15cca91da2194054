"""Statements of retention: which finished runs may go, and deleting them with what is theirs.

A run goes with its archived events (``run_events``), its workflow nodes (``workflow_nodes``)
and the schedule firing that created it (``schedule_firings``); its attempts are a column of
the run itself. Rows are deleted explicitly, children first, rather than left to the foreign
keys' cascade, so that nothing depends on SQLite's ``foreign_keys`` pragma.

Statements over a caller's connection: they flush, never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from runs.domain.runs import TERMINAL_STATUSES, RunRef
from runs.persistence.tables import (
    is_one_of,
    run_events,
    runs,
    schedule_firings,
    workflow_nodes,
)

_TERMINAL = sorted(status.value for status in TERMINAL_STATUSES)
_child = runs.alias("child")


@dataclass(frozen=True, slots=True)
class Doomed:
    """A finished run chosen for deletion (its schedule, to find its firing)."""

    ref: RunRef
    schedule_id: str | None


def take_write_lock(conn: sa.Connection) -> None:
    """SQLite: hold the database's write lock from the transaction's start, so that the runs
    one pruner chose are not chosen by another before it deletes them. (PostgreSQL locks the
    chosen rows and skips those another pruner holds.)"""
    if conn.dialect.name == "sqlite":
        conn.execute(runs.update().where(sa.false()).values(run_id=runs.c.run_id))


def expired_runs(conn: sa.Connection, cutoff: datetime, limit: int) -> list[Doomed]:
    """Up to ``limit`` finished runs that completed before ``cutoff``, oldest first, locked for
    this transaction (rows another transaction holds are skipped, not waited for).

    Kept although old: a cancelled run whose work has not stopped yet (it holds a lease: its
    worker still reads the run's cancel flag), a run with children (children go first, so no
    run ever names a parent that is gone; the parent follows in a later batch), and a run
    whose schedule has not heard of its outcome yet (the scheduler settles it first)."""
    has_child = sa.exists().where(
        _child.c.project_id == runs.c.project_id,
        _child.c.parent_run_id == runs.c.run_id,
    )
    unsettled = sa.exists().where(
        schedule_firings.c.schedule_id == runs.c.schedule_id,
        schedule_firings.c.run_id == runs.c.run_id,
        sa.not_(schedule_firings.c.settled),
    )
    query = (
        sa.select(runs.c.project_id, runs.c.run_id, runs.c.schedule_id)
        .where(
            runs.c.completed_at < cutoff,
            is_one_of(runs.c.status, _TERMINAL),
            runs.c.lease_owner.is_(None),
            sa.not_(has_child),
            sa.or_(runs.c.schedule_id.is_(None), sa.not_(unsettled)),
        )
        .order_by(runs.c.completed_at)
        .limit(limit)
        .with_for_update(of=runs, skip_locked=True)
    )
    return [
        Doomed(RunRef(row.project_id, row.run_id), row.schedule_id) for row in conn.execute(query)
    ]


def delete_runs(conn: sa.Connection, doomed: Sequence[Doomed]) -> int:
    """Delete these runs (still only if finished) with their events, nodes and firings.
    Returns how many runs were deleted."""
    if not doomed:
        return 0
    keys = [(d.ref.project_id, d.ref.run_id) for d in doomed]
    for table in (run_events, workflow_nodes):
        conn.execute(table.delete().where(sa.tuple_(table.c.project_id, table.c.run_id).in_(keys)))
    fired = [(d.schedule_id, d.ref.run_id) for d in doomed if d.schedule_id is not None]
    if fired:
        conn.execute(
            schedule_firings.delete().where(
                sa.tuple_(schedule_firings.c.schedule_id, schedule_firings.c.run_id).in_(fired)
            )
        )
    result = conn.execute(
        runs.delete().where(
            sa.tuple_(runs.c.project_id, runs.c.run_id).in_(keys),
            is_one_of(runs.c.status, _TERMINAL),
        )
    )
    return result.rowcount
