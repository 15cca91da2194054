"""Statements that keep runs moving when their job is lost or their attempts fail, stall or die.

Every one is a single conditional UPDATE: it changes the run only while the attempt it names
still owns it (``status`` and ``attempt`` match, and for a reclaim the lease has run out), so a
sweeper, a late worker and a cancel can race without read-modify-write.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from runs.domain.runs import AttemptRecord, Run, RunKind, RunRef, RunStatus, attempts_to_json
from runs.domain.text import storable
from runs.persistence.event_archive import of_run
from runs.persistence.records import run_from_row
from runs.persistence.tables import UTCDateTime, runs
from runs.persistence.transitions import FINISH_FIELDS

_RUNNING_TASK = (runs.c.kind == RunKind.TASK.value, runs.c.status == RunStatus.RUNNING.value)

_RENEW = (
    runs.update()
    .where(
        runs.c.project_id == sa.bindparam("b_project_id"),
        runs.c.run_id == sa.bindparam("b_run_id"),
        runs.c.attempt == sa.bindparam("b_attempt"),
        sa.or_(
            runs.c.status == RunStatus.RUNNING.value,
            # Cancelled, but its worker is still stopping the work: the lease stays held, so
            # that the sweeper does not note a stop before the work really stopped.
            sa.and_(
                runs.c.status == RunStatus.CANCELLED.value,
                runs.c.cancel_stopped_at.is_(None),
                runs.c.lease_owner.is_not(None),
            ),
        ),
    )
    .values(lease_expires_at=sa.bindparam("b_until", type_=UTCDateTime()))
    .returning(runs.c.status)
)


def renew_lease(conn: sa.Connection, ref: RunRef, attempt: int, until: datetime) -> str | None:
    """Extend an attempt's lease. Returns the run's status (``running``, or ``cancelled``
    while the attempt is still stopping), or None once the attempt no longer owns the run."""
    params = {"b_project_id": ref.project_id, "b_run_id": ref.run_id}
    row = conn.execute(_RENEW, {**params, "b_attempt": attempt, "b_until": until}).first()
    return str(row[0]) if row is not None else None


def _owned_by(ref: RunRef, attempt: int, *, lease_expired_before: datetime | None) -> Any:
    condition = sa.and_(
        of_run(runs, ref),
        runs.c.status == RunStatus.RUNNING.value,
        runs.c.attempt == attempt,
    )
    if lease_expired_before is not None:
        condition = sa.and_(
            condition,
            runs.c.kind == RunKind.TASK.value,
            runs.c.lease_expires_at < lease_expired_before,
        )
    return condition


def requeue(
    conn: sa.Connection,
    ref: RunRef,
    attempt: int,
    *,
    attempts: tuple[AttemptRecord, ...],
    due: datetime,
    now: datetime,
    lease_expired_before: datetime | None = None,
) -> bool:
    """running -> pending for another attempt, due at ``due``; records the attempt that ended.

    With ``lease_expired_before``, only when that attempt's lease ran out (a reclaim)."""
    result = conn.execute(
        runs.update()
        .where(_owned_by(ref, attempt, lease_expired_before=lease_expired_before))
        .values(
            status=RunStatus.PENDING.value,
            attempts=storable(attempts_to_json(attempts)),
            available_at=due,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return result.rowcount == 1


def hand_back(conn: sa.Connection, ref: RunRef, attempt: int, now: datetime) -> bool:
    """running -> pending at once, the attempt not counted: the next claim takes its number
    again. Only while ``attempt`` still owns the run."""
    result = conn.execute(
        runs.update()
        .where(_owned_by(ref, attempt, lease_expired_before=None))
        .values(
            status=RunStatus.PENDING.value,
            attempt=attempt - 1,
            available_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return result.rowcount == 1


def fail_lost(
    conn: sa.Connection, ref: RunRef, attempt: int, lease_expired_before: datetime, values: Any
) -> bool:
    """running -> terminal for an attempt whose lease ran out (every field of FINISH_FIELDS)."""
    result = conn.execute(
        runs.update()
        .where(_owned_by(ref, attempt, lease_expired_before=lease_expired_before))
        .values(
            lease_owner=None,
            lease_expires_at=None,
            **{name: storable(values[name]) for name in FINISH_FIELDS},
        )
    )
    return result.rowcount == 1


def stale_pending(
    conn: sa.Connection, before: datetime, limit: int
) -> list[tuple[RunRef, str, str, int]]:
    """(run, target, queue, attempt) of runs runnable, and neither sent nor changed, since
    before ``before`` (``updated_at`` marks the last send)."""
    rows = conn.execute(
        sa.select(runs.c.project_id, runs.c.run_id, runs.c.target, runs.c.queue, runs.c.attempt)
        .where(
            runs.c.status == RunStatus.PENDING.value,
            runs.c.available_at < before,
            runs.c.updated_at < before,
        )
        .order_by(runs.c.available_at)
        .limit(limit)
    )
    return [(RunRef(r.project_id, r.run_id), r.target, r.queue, r.attempt) for r in rows]


def touch_pending(conn: sa.Connection, ref: RunRef, before: datetime, now: datetime) -> bool:
    """Take the right to re-send a stale pending run's job; one sweeper wins."""
    result = conn.execute(
        runs.update()
        .where(
            of_run(runs, ref),
            runs.c.status == RunStatus.PENDING.value,
            runs.c.available_at < before,
            runs.c.updated_at < before,
        )
        .values(updated_at=now)
    )
    return result.rowcount == 1


def expired_leases(conn: sa.Connection, now: datetime, limit: int) -> list[Run]:
    """Running task runs whose worker stopped renewing its lease, oldest lease first."""
    rows = conn.execute(
        runs.select()
        .where(*_RUNNING_TASK, runs.c.lease_expires_at < now)
        .order_by(runs.c.lease_expires_at)
        .limit(limit)
    ).mappings()
    return [run_from_row(r) for r in rows]


def record_stop(conn: sa.Connection, ref: RunRef, attempt: int, now: datetime) -> bool:
    """A cancelled run's attempt has stopped working: note when, and release its lease."""
    result = conn.execute(
        runs.update()
        .where(
            of_run(runs, ref),
            runs.c.status == RunStatus.CANCELLED.value,
            runs.c.attempt == attempt,
            runs.c.cancel_stopped_at.is_(None),
        )
        .values(cancel_stopped_at=now, lease_owner=None, lease_expires_at=None)
    )
    return result.rowcount == 1


def record_lost_stops(conn: sa.Connection, now: datetime) -> int:
    """Cancelled runs whose worker never confirmed the stop: it stopped when its lease ended."""
    result = conn.execute(
        runs.update()
        .where(
            runs.c.status == RunStatus.CANCELLED.value,
            runs.c.cancel_stopped_at.is_(None),
            runs.c.lease_expires_at < now,
        )
        .values(cancel_stopped_at=runs.c.lease_expires_at, lease_owner=None, lease_expires_at=None)
    )
    return result.rowcount


def expirable(conn: sa.Connection, available_before: datetime, limit: int) -> list[Run]:
    """Pending runs that have waited for a worker since before ``available_before``."""
    rows = conn.execute(
        runs.select()
        .where(runs.c.status == RunStatus.PENDING.value, runs.c.available_at < available_before)
        .order_by(runs.c.available_at)
        .limit(limit)
    ).mappings()
    return [run_from_row(r) for r in rows]


def expire(
    conn: sa.Connection, ref: RunRef, available_before: datetime, values: Mapping[str, Any]
) -> bool:
    """pending -> failed (``expired``) while the run is still pending and still that old."""
    result = conn.execute(
        runs.update()
        .where(
            of_run(runs, ref),
            runs.c.status == RunStatus.PENDING.value,
            runs.c.available_at < available_before,
        )
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    return result.rowcount == 1
