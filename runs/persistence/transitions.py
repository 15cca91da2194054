"""The conditional statements that move a run through its states on the hot path: claim,
finish, cancel, and what a retry reads to learn whether its first try landed. What a task
produced is written through ``runs.domain.text.storable``, so that no record is stored in a
form a read cannot return.

Statements over a caller's connection: they flush, never commit (the service owns every
transaction), and each state change is one conditional statement, never read-modify-write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from runs.domain.events import RunEvent
from runs.domain.runs import ACTIVE_STATUSES, AttemptRecord, Run, RunKind, RunRef, RunStatus
from runs.domain.text import storable
from runs.persistence.event_archive import insert_events, of_run
from runs.persistence.records import run_from_row
from runs.persistence.tables import UTCDateTime, is_one_of, run_events, runs

_RUN_COLUMNS = tuple(c for c in runs.c)
# What an attempt needs of its run: a claimed run is pending, so its outcome columns are
# empty, and the rest is the API's to show.
CLAIMED_COLUMNS = tuple(
    runs.c[name]
    for name in (
        "project_id",
        "run_id",
        "kind",
        "status",
        "owner_kind",
        "owner_id",
        "parent_run_id",
        "root_run_id",
        "target",
        "queue",
        "config",
        "input",
        "timeout_seconds",
        "backoff_limit",
        "attempt",
        "attempts",
        "available_at",
        "attempt_started_at",
        "created_at",
        "updated_at",
        "started_at",
    )
)


# The hot path's statements are built once; each call only binds parameters.
_CLAIM = (
    runs.update()
    .where(
        runs.c.project_id == sa.bindparam("b_project_id"),
        runs.c.run_id == sa.bindparam("b_run_id"),
        runs.c.status == RunStatus.PENDING.value,
        # Not before a retry's backoff is over: an early duplicate message is dropped.
        sa.or_(
            runs.c.available_at.is_(None),
            runs.c.available_at <= sa.bindparam("b_now", type_=UTCDateTime()),
        ),
    )
    .values(
        status=RunStatus.RUNNING.value,
        attempt=runs.c.attempt + 1,
        started_at=sa.func.coalesce(runs.c.started_at, sa.bindparam("b_now", type_=UTCDateTime())),
        updated_at=sa.bindparam("b_now", type_=UTCDateTime()),
        attempt_started_at=sa.bindparam("b_now", type_=UTCDateTime()),
        lease_owner=sa.bindparam("b_worker"),
        lease_expires_at=sa.bindparam("b_lease", type_=UTCDateTime()),
    )
    .returning(*CLAIMED_COLUMNS)
)

FINISH_FIELDS = (
    "status",
    "output",
    "error",
    "logs",
    "artifacts",
    "exit_code",
    "duration_ms",
    "completed_at",
    "updated_at",
    "attempts",
)
_FINISH = (
    runs.update()
    .where(
        runs.c.project_id == sa.bindparam("b_project_id"),
        runs.c.run_id == sa.bindparam("b_run_id"),
        is_one_of(runs.c.status, [RunStatus.RUNNING.value, RunStatus.WAITING.value]),
        runs.c.attempt == sa.bindparam("b_attempt"),
    )
    .values(
        lease_owner=None,
        lease_expires_at=None,
        waiting_reason=None,
        **{name: sa.bindparam(f"b_{name}", type_=runs.c[name].type) for name in FINISH_FIELDS},
    )
)


def claimed_by(conn: sa.Connection, ref: RunRef, owner: str) -> Run | None:
    """The run as the claim held by ``owner`` left it, when that claim took effect (a retry
    of a claim whose answer was lost finds it here): running, or cancelled while the attempt
    still holds its lease. ``None`` otherwise."""
    row = (
        conn.execute(
            sa.select(*CLAIMED_COLUMNS).where(
                of_run(runs, ref),
                runs.c.lease_owner == owner,
                runs.c.status.in_([RunStatus.RUNNING.value, RunStatus.CANCELLED.value]),
            )
        )
        .mappings()
        .first()
    )
    return run_from_row(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class RunMarks:
    """What a run's last state change wrote: enough to tell whether a change whose answer was
    lost took effect (the caller compares the times it wrote)."""

    status: RunStatus
    attempt: int
    updated_at: datetime | None
    completed_at: datetime | None
    available_at: datetime | None
    attempts: tuple[AttemptRecord, ...]


def marks_of(conn: sa.Connection, ref: RunRef) -> RunMarks | None:
    row = conn.execute(
        sa.select(
            runs.c.status,
            runs.c.attempt,
            runs.c.updated_at,
            runs.c.completed_at,
            runs.c.available_at,
            runs.c.attempts,
        ).where(of_run(runs, ref))
    ).first()
    if row is None:
        return None
    return RunMarks(
        status=RunStatus(row.status),
        attempt=row.attempt,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
        available_at=row.available_at,
        attempts=tuple(AttemptRecord.from_json(a) for a in row.attempts or ()),
    )


def claim_run(
    conn: sa.Connection, ref: RunRef, *, worker: str, lease_until: datetime, now: datetime
) -> Run | None:
    """pending -> running, one attempt more, its lease held by ``worker`` (a token unique to
    the claim). ``None`` when the run is not pending (or not due yet: a retry still in its
    backoff). The run returned holds what an attempt needs
    (``CLAIMED_COLUMNS``); its other fields keep their defaults."""
    row = (
        conn.execute(
            _CLAIM,
            {
                "b_project_id": ref.project_id,
                "b_run_id": ref.run_id,
                "b_now": now,
                "b_worker": worker,
                "b_lease": lease_until,
            },
        )
        .mappings()
        .first()
    )
    return run_from_row(row) if row is not None else None


# On PostgreSQL the terminal record and the copy of the events are one statement: the
# conditional UPDATE, and an INSERT of the events that happens only when the UPDATE did.
_FINISHED = _FINISH.returning(runs.c.project_id, runs.c.run_id).cte("finished")
# The events travel as one JSON array: one parameter to encode, whatever their number.
_FINAL_EVENTS = (
    sa.func.jsonb_to_recordset(sa.bindparam("b_events", type_=postgresql.JSONB()))
    .table_valued(
        sa.column("event_id", sa.BigInteger()),
        sa.column("event_type", sa.String()),
        sa.column("payload", postgresql.JSONB()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    .render_derived(with_types=True)
)
_ARCHIVED = (
    run_events.insert()
    .from_select(
        ["project_id", "run_id", "event_id", "event_type", "payload", "created_at"],
        sa.select(
            _FINISHED.c.project_id,
            _FINISHED.c.run_id,
            _FINAL_EVENTS.c.event_id,
            _FINAL_EVENTS.c.event_type,
            _FINAL_EVENTS.c.payload,
            _FINAL_EVENTS.c.created_at,
        )
        .select_from(_FINISHED)
        .join(_FINAL_EVENTS, sa.true()),
    )
    .cte("archived")
)
_FINISH_WITH_EVENTS = sa.select(sa.func.count()).select_from(_FINISHED).add_cte(_ARCHIVED)


def finishes_in_one_statement(engine: sa.Engine) -> bool:
    """Whether ``finish_run`` is a single statement (atomic even in autocommit) here."""
    return engine.dialect.name == "postgresql"


def finish_run(
    conn: sa.Connection,
    ref: RunRef,
    attempt: int,
    values: Mapping[str, Any],
    events: Sequence[RunEvent],
) -> bool:
    """Write the terminal record of a running attempt (every field of ``FINISH_FIELDS``) and
    archive the run's events. One statement on PostgreSQL; elsewhere two, so call it inside
    a transaction (see ``finishes_in_one_statement``).

    False when the attempt no longer owns the run: it changed nothing.
    """
    params = {f"b_{name}": storable(values[name]) for name in FINISH_FIELDS}
    params |= {"b_project_id": ref.project_id, "b_run_id": ref.run_id, "b_attempt": attempt}
    if conn.dialect.name == "postgresql":
        params["b_events"] = [
            {
                "event_id": e.event_id,
                "event_type": e.event_type,
                "payload": storable(e.payload),
                "created_at": e.created_at.isoformat(),
            }
            for e in events
        ]
        return bool(conn.execute(_FINISH_WITH_EVENTS, params).scalar_one())
    if conn.execute(_FINISH, params).rowcount != 1:
        return False
    insert_events(conn, ref, events)
    return True


def cancel_run(
    conn: sa.Connection, ref: RunRef, now: datetime, values: Mapping[str, Any]
) -> Run | None:
    """Any active status -> cancelled. Returns the cancelled run, or ``None`` if not active.

    A running task run keeps its lease: the work has stopped only once its worker says so
    (``recovery.record_stop``) or the lease runs out. Anything else stopped now.
    """
    executing = sa.and_(runs.c.kind == RunKind.TASK.value, runs.c.status == RunStatus.RUNNING.value)
    row = (
        conn.execute(
            runs.update()
            .where(
                of_run(runs, ref),
                runs.c.status.in_([s.value for s in ACTIVE_STATUSES]),
            )
            .values(
                status=RunStatus.CANCELLED.value,
                waiting_reason=None,
                cancel_requested_at=now,
                cancel_stopped_at=sa.case((executing, None), else_=now),
                lease_owner=sa.case((executing, runs.c.lease_owner), else_=None),
                lease_expires_at=sa.case((executing, runs.c.lease_expires_at), else_=None),
                **values,
            )
            .returning(*_RUN_COLUMNS)
        )
        .mappings()
        .first()
    )
    return run_from_row(row) if row is not None else None


def set_cancelled_duration(conn: sa.Connection, ref: RunRef, duration_ms: int) -> None:
    """Record how long a just-cancelled run ran (only while no duration is recorded)."""
    conn.execute(
        runs.update()
        .where(
            of_run(runs, ref),
            runs.c.status == RunStatus.CANCELLED.value,
            runs.c.duration_ms.is_(None),
        )
        .values(duration_ms=duration_ms)
    )
