"""The hot path's statements for runs that travel together (a group of one job): claim them in
one statement, finish them in one, hand the unstarted ones back in one.

Each has the same conditions as its one-run twin in ``runs.persistence.transitions`` and
``runs.persistence.recovery``, applied to every run of the group at once; a run whose condition
fails is left out of the answer and unchanged. Statements over a caller's connection: they
never commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from runs.domain.events import RunEvent
from runs.domain.runs import Run, RunRef, RunStatus
from runs.domain.text import storable
from runs.persistence.records import run_from_row
from runs.persistence.tables import (
    UTCDateTime,
    is_one_of,
    json_recordset,
    json_row,
    run_events,
    runs,
)
from runs.persistence.transitions import CLAIMED_COLUMNS, FINISH_FIELDS, finish_run

_REFS = sa.tuple_(runs.c.project_id, runs.c.run_id).in_(sa.bindparam("b_refs", expanding=True))
_NOW = sa.bindparam("b_now", type_=UTCDateTime())

_CLAIM_MANY = (
    runs.update()
    .where(
        _REFS,
        runs.c.status == RunStatus.PENDING.value,
        sa.or_(runs.c.available_at.is_(None), runs.c.available_at <= _NOW),
    )
    .values(
        status=RunStatus.RUNNING.value,
        attempt=runs.c.attempt + 1,
        started_at=sa.func.coalesce(runs.c.started_at, _NOW),
        updated_at=_NOW,
        attempt_started_at=_NOW,
        lease_owner=sa.bindparam("b_worker"),
        lease_expires_at=sa.bindparam("b_lease", type_=UTCDateTime()),
    )
    .returning(*CLAIMED_COLUMNS)
)


def _pairs(refs: Sequence[RunRef]) -> list[tuple[str, str]]:
    return [(ref.project_id, ref.run_id) for ref in refs]


def claim_runs(
    conn: sa.Connection,
    refs: Sequence[RunRef],
    *,
    worker: str,
    lease_until: datetime,
    now: datetime,
) -> list[Run]:
    """``claim_run`` for many runs in one statement: each pending (and due) run of ``refs``
    becomes running, one attempt more, its lease held by ``worker``. Returns the runs claimed,
    in the order of ``refs``."""
    rows = conn.execute(
        _CLAIM_MANY,
        {"b_refs": _pairs(refs), "b_now": now, "b_worker": worker, "b_lease": lease_until},
    ).mappings()
    claimed = {(row["project_id"], row["run_id"]): run_from_row(row) for row in rows}
    return [claimed[key] for key in _pairs(refs) if key in claimed]


def claimed_by(conn: sa.Connection, refs: Sequence[RunRef], owner: str) -> list[Run]:
    """The runs of ``refs`` a claim by ``owner`` took (a retry of a claim whose answer was
    lost finds them here): running, or cancelled while the claim still holds their lease."""
    rows = conn.execute(
        sa.select(*CLAIMED_COLUMNS).where(
            _REFS,
            runs.c.lease_owner == owner,
            runs.c.status.in_([RunStatus.RUNNING.value, RunStatus.CANCELLED.value]),
        ),
        {"b_refs": _pairs(refs)},
    ).mappings()
    found = {(row["project_id"], row["run_id"]): run_from_row(row) for row in rows}
    return [found[key] for key in _pairs(refs) if key in found]


_FIRST_START = sa.and_(runs.c.attempt == 1, runs.c.started_at == runs.c.attempt_started_at)
_HAND_OFF = (
    runs.update()
    .where(
        _REFS,
        runs.c.status == RunStatus.RUNNING.value,
        runs.c.lease_owner == sa.bindparam("b_owner"),
    )
    .values(
        status=RunStatus.PENDING.value,
        attempt=runs.c.attempt - 1,
        # A run whose claim was its first start has not started: the next claim is its first.
        started_at=sa.case((_FIRST_START, None), else_=runs.c.started_at),
        attempt_started_at=sa.case((_FIRST_START, None), else_=runs.c.attempt_started_at),
        available_at=_NOW,
        updated_at=_NOW,
        lease_owner=None,
        lease_expires_at=None,
    )
    .returning(runs.c.project_id, runs.c.run_id)
)


def hand_off_runs(
    conn: sa.Connection, refs: Sequence[RunRef], *, owner: str, now: datetime
) -> set[RunRef]:
    """Claimed runs whose attempts never started go back to pending at once, the attempt not
    counted (``recovery.hand_back`` for runs that never ran). Only the runs ``owner`` still
    holds running; returns those handed off."""
    rows = conn.execute(_HAND_OFF, {"b_refs": _pairs(refs), "b_owner": owner, "b_now": now})
    return {RunRef(project_id, run_id) for project_id, run_id in rows}


def handed_off(conn: sa.Connection, refs: Sequence[RunRef], now: datetime) -> set[RunRef]:
    """The runs of ``refs`` a hand-off at ``now`` left pending (a retry after a lost answer)."""
    rows = conn.execute(
        sa.select(runs.c.project_id, runs.c.run_id).where(
            _REFS, runs.c.status == RunStatus.PENDING.value, runs.c.updated_at == _NOW
        ),
        {"b_refs": _pairs(refs), "b_now": now},
    )
    return {RunRef(project_id, run_id) for project_id, run_id in rows}


@dataclass(frozen=True, slots=True)
class Finishing:
    """The terminal record of one run's attempt: ``values`` holds every field of
    ``FINISH_FIELDS`` (and ``started_at`` / ``attempt_started_at`` when the attempt started
    later than its claim), ``events`` the run's events to archive."""

    ref: RunRef
    attempt: int
    values: Mapping[str, Any]
    events: Sequence[RunEvent]


_STARTS = ("started_at", "attempt_started_at")
_ROW_COLUMNS = ("project_id", "run_id", "attempt", *FINISH_FIELDS, *_STARTS)
_ROWS = json_recordset("b_rows", (runs.c[name] for name in _ROW_COLUMNS), "v")
_FINISHED = (
    runs.update()
    .where(
        runs.c.project_id == _ROWS.c.project_id,
        runs.c.run_id == _ROWS.c.run_id,
        runs.c.attempt == _ROWS.c.attempt,
        is_one_of(runs.c.status, [RunStatus.RUNNING.value, RunStatus.WAITING.value]),
    )
    .values(
        lease_owner=None,
        lease_expires_at=None,
        waiting_reason=None,
        **{name: _ROWS.c[name] for name in FINISH_FIELDS},
        **{name: sa.func.coalesce(_ROWS.c[name], runs.c[name]) for name in _STARTS},
    )
    .returning(runs.c.project_id, runs.c.run_id)
    .cte("finished")
)
_EVENT_COLUMNS = ("project_id", "run_id", "event_id", "event_type", "payload", "created_at")
_EVENTS = json_recordset("b_events", (run_events.c[name] for name in _EVENT_COLUMNS), "e")
_ARCHIVED = (
    run_events.insert()
    .from_select(
        list(_EVENT_COLUMNS),
        sa.select(*(_EVENTS.c[name] for name in _EVENT_COLUMNS)).join_from(
            _EVENTS,
            _FINISHED,
            sa.and_(
                _FINISHED.c.project_id == _EVENTS.c.project_id,
                _FINISHED.c.run_id == _EVENTS.c.run_id,
            ),
        ),
    )
    .cte("archived")
)
_FINISH_MANY = sa.select(_FINISHED.c.project_id, _FINISHED.c.run_id).add_cte(_ARCHIVED)


def finish_runs(conn: sa.Connection, items: Sequence[Finishing]) -> set[RunRef]:
    """``finish_run`` for many runs: each one's terminal record written and its events archived
    while its attempt still owns it. One statement on PostgreSQL; elsewhere two a run, so call
    it inside a transaction there. Returns the runs finished."""
    if conn.dialect.name != "postgresql":
        return {item.ref for item in items if _finish_alone(conn, item)}
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for item in items:
        ref = {"project_id": item.ref.project_id, "run_id": item.ref.run_id}
        row = {name: storable(item.values[name]) for name in FINISH_FIELDS}
        row |= {name: item.values.get(name) for name in _STARTS}
        rows.append(json_row(row | ref | {"attempt": item.attempt}))
        events += [
            json_row(
                ref
                | {
                    "event_id": e.event_id,
                    "event_type": e.event_type,
                    "payload": storable(e.payload),
                    "created_at": e.created_at,
                }
            )
            for e in item.events
        ]
    result = conn.execute(_FINISH_MANY, {"b_rows": rows, "b_events": events})
    return {RunRef(project_id, run_id) for project_id, run_id in result}


def _finish_alone(conn: sa.Connection, item: Finishing) -> bool:
    starts = {name: item.values[name] for name in _STARTS if item.values.get(name) is not None}
    if not finish_run(conn, item.ref, item.attempt, item.values, item.events):
        return False
    if starts:
        conn.execute(
            runs.update()
            .where(runs.c.project_id == item.ref.project_id, runs.c.run_id == item.ref.run_id)
            .values(**starts)
        )
    return True
