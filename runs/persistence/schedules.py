"""Schedule records and their firings. Statements over a caller's connection: they never
commit; changes the scheduler races for are conditional statements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from runs.domain.runs import ACTIVE_STATUSES, TERMINAL_STATUSES
from runs.domain.schedules import (
    Catchup,
    ConcurrencyPolicy,
    DefinitionSource,
    FiringOutcome,
    Schedule,
    ScheduleStatus,
)
from runs.persistence.tables import (
    UTCDateTime,
    before_in_listing,
    is_one_of,
    runs,
    schedule_firings,
    schedules,
)


@dataclass(frozen=True, slots=True)
class ScheduleFilters:
    statuses: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    source_trigger_id: str | None = None


def schedule_from_row(row: Mapping[Any, Any]) -> Schedule:
    data = dict(row)
    data["status"] = ScheduleStatus(data["status"])
    data["concurrency_policy"] = ConcurrencyPolicy(data["concurrency_policy"])
    data["catchup"] = Catchup(data["catchup"])
    data["definition_source"] = DefinitionSource(data["definition_source"])
    return Schedule(**data)


def insert_schedule(conn: sa.Connection, values: Mapping[str, Any]) -> None:
    conn.execute(schedules.insert(), dict(values))


def get_schedule(
    conn: sa.Connection, project_id: str, schedule_id: str, *, for_update: bool = False
) -> Schedule | None:
    query = schedules.select().where(
        schedules.c.project_id == project_id, schedules.c.id == schedule_id
    )
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return schedule_from_row(row) if row is not None else None


def list_schedules(
    conn: sa.Connection,
    project_id: str,
    filters: ScheduleFilters,
    *,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[Schedule]:
    """Schedules of a project, newest first (``created_at`` then ``id`` descending)."""
    query = schedules.select().where(schedules.c.project_id == project_id)
    if filters.statuses:
        query = query.where(schedules.c.status.in_(filters.statuses))
    if filters.targets:
        query = query.where(schedules.c.target.in_(filters.targets))
    if filters.source_trigger_id is not None:
        query = query.where(schedules.c.source_trigger_id == filters.source_trigger_id)
    if before is not None:
        query = query.where(before_in_listing(schedules.c.created_at, schedules.c.id, before))
    query = query.order_by(schedules.c.created_at.desc(), schedules.c.id.desc()).limit(limit)
    return [schedule_from_row(r) for r in conn.execute(query).mappings()]


def source_schedules(conn: sa.Connection, project_id: str) -> list[Schedule]:
    query = schedules.select().where(
        schedules.c.project_id == project_id,
        schedules.c.definition_source == DefinitionSource.SOURCE.value,
    )
    return [schedule_from_row(r) for r in conn.execute(query).mappings()]


def update_schedule(
    conn: sa.Connection, project_id: str, schedule_id: str, values: Mapping[str, Any]
) -> bool:
    result = conn.execute(
        schedules.update()
        .where(schedules.c.project_id == project_id, schedules.c.id == schedule_id)
        .values(**values)
    )
    return result.rowcount == 1


def delete_schedule(conn: sa.Connection, project_id: str, schedule_id: str) -> bool:
    conn.execute(schedule_firings.delete().where(schedule_firings.c.schedule_id == schedule_id))
    result = conn.execute(
        schedules.delete().where(
            schedules.c.project_id == project_id, schedules.c.id == schedule_id
        )
    )
    return result.rowcount == 1


# -- the scheduler's side ---------------------------------------------------------------------


def take_write_lock(conn: sa.Connection) -> None:
    """SQLite: hold the database's write lock from the transaction's start, so that what it
    reads is not changed by another scheduler before it writes. (PostgreSQL locks rows.)"""
    if conn.dialect.name == "sqlite":
        conn.execute(schedules.update().where(sa.false()).values(id=schedules.c.id))


def due_schedules(conn: sa.Connection, now: datetime, limit: int) -> list[Schedule]:
    """Active schedules whose next occurrence is due, oldest first, locked for this
    transaction; rows another scheduler holds are skipped, not waited for."""
    query = (
        schedules.select()
        .where(
            schedules.c.status == ScheduleStatus.ACTIVE.value,
            schedules.c.next_run_at.is_not(None),
            schedules.c.next_run_at <= now,
        )
        .order_by(schedules.c.next_run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [schedule_from_row(r) for r in conn.execute(query).mappings()]


def earliest_due(conn: sa.Connection) -> datetime | None:
    query = sa.select(sa.func.min(schedules.c.next_run_at)).where(
        schedules.c.status == ScheduleStatus.ACTIVE.value,
        schedules.c.next_run_at.is_not(None),
    )
    found = conn.execute(query).scalar_one_or_none()
    if found is not None and found.tzinfo is None:  # SQLite's aggregate skips the column type
        found = found.replace(tzinfo=UTC)
    return found


@dataclass(frozen=True, slots=True)
class Advance:
    """A due schedule moved on by a firing pass: ``values`` to write, runs counted."""

    schedule: Schedule
    values: Mapping[str, Any]
    created: int
    skipped: int


def advance_many(conn: sa.Connection, advances: Sequence[Advance]) -> bool:
    """``advance`` for many schedules, one statement for those writing the same columns (one
    round trip each on PostgreSQL, the driver's pipeline). False when any of them moved on
    meanwhile: then roll the transaction back."""
    by_columns: dict[tuple[str, ...], list[Advance]] = {}
    for item in advances:
        by_columns.setdefault(tuple(sorted(item.values)), []).append(item)
    moved = 0
    for columns, items in by_columns.items():
        statement = (
            schedules.update()
            .where(
                schedules.c.id == sa.bindparam("b_id"),
                schedules.c.status == ScheduleStatus.ACTIVE.value,
                schedules.c.next_run_at == sa.bindparam("b_next", type_=UTCDateTime()),
            )
            .values(
                run_count=schedules.c.run_count + sa.bindparam("b_created", type_=sa.Integer()),
                skipped_count=schedules.c.skipped_count
                + sa.bindparam("b_skipped", type_=sa.Integer()),
                **{
                    name: sa.bindparam(f"v_{name}", type_=schedules.c[name].type)
                    for name in columns
                },
            )
        )
        rows = [
            {
                "b_id": item.schedule.id,
                "b_next": item.schedule.next_run_at,
                "b_created": item.created,
                "b_skipped": item.skipped,
                **{f"v_{name}": item.values[name] for name in columns},
            }
            for item in items
        ]
        moved += conn.execute(statement, rows).rowcount
    return moved == len(advances)


def count_run(conn: sa.Connection, schedule_id: str, values: Mapping[str, Any]) -> None:
    """A triggered run: counted, without moving the schedule's next occurrence."""
    conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id)
        .values(run_count=schedules.c.run_count + 1, **values)
    )


def active_run_ids(conn: sa.Connection, project_id: str, schedule_id: str) -> list[str]:
    """Runs of the schedule that have not ended (ix_runs_schedule_active)."""
    query = sa.select(runs.c.run_id).where(
        runs.c.project_id == project_id,
        runs.c.schedule_id == schedule_id,
        is_one_of(runs.c.status, sorted(ACTIVE_STATUSES)),
    )
    return list(conn.execute(query).scalars())


def firing_row(
    schedule: Schedule,
    *,
    outcome: FiringOutcome,
    now: datetime,
    scheduled_for: datetime | None = None,
    idempotency_key: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The row of one firing (``insert_firings``)."""
    return {
        "schedule_id": schedule.id,
        "project_id": schedule.project_id,
        "scheduled_for": scheduled_for,
        "idempotency_key": idempotency_key,
        "outcome": outcome.value,
        "run_id": run_id,
        "settled": run_id is None,
        "created_at": now,
    }


def insert_firings(conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert firings in one statement. Raises ``IntegrityError`` (and inserts none) when an
    occurrence or a key fired already."""
    if rows:
        conn.execute(schedule_firings.insert(), list(rows))


def insert_firing(
    conn: sa.Connection,
    schedule: Schedule,
    *,
    outcome: FiringOutcome,
    now: datetime,
    scheduled_for: datetime | None = None,
    idempotency_key: str | None = None,
    run_id: str | None = None,
) -> None:
    """Raises ``IntegrityError`` when the occurrence or the key fired already."""
    row = firing_row(
        schedule,
        outcome=outcome,
        now=now,
        scheduled_for=scheduled_for,
        idempotency_key=idempotency_key,
        run_id=run_id,
    )
    insert_firings(conn, [row])


def firing_by_key(conn: sa.Connection, schedule_id: str, key: str) -> str | None:
    """The run a trigger with this idempotency key created."""
    query = sa.select(schedule_firings.c.run_id).where(
        schedule_firings.c.schedule_id == schedule_id,
        schedule_firings.c.idempotency_key == key,
    )
    return conn.execute(query).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class EndedRun:
    firing_id: int
    schedule_id: str
    run_id: str
    status: str
    completed_at: datetime | None
    error: Any


def ended_unsettled(conn: sa.Connection, limit: int) -> list[EndedRun]:
    """Fired runs that ended since their schedule last heard of them, oldest first."""
    query = (
        sa.select(
            schedule_firings.c.id,
            schedule_firings.c.schedule_id,
            schedule_firings.c.run_id,
            runs.c.status,
            runs.c.completed_at,
            runs.c.error,
        )
        .join(
            runs,
            sa.and_(
                runs.c.project_id == schedule_firings.c.project_id,
                runs.c.run_id == schedule_firings.c.run_id,
            ),
        )
        .where(sa.not_(schedule_firings.c.settled))
        .where(is_one_of(runs.c.status, sorted(TERMINAL_STATUSES)))
        .order_by(schedule_firings.c.created_at)
        .limit(limit)
    )
    return [EndedRun(*row) for row in conn.execute(query)]


def settle(conn: sa.Connection, firing_ids: Sequence[int]) -> None:
    conn.execute(
        schedule_firings.update().where(schedule_firings.c.id.in_(firing_ids)).values(settled=True)
    )


def record_success(conn: sa.Connection, schedule_id: str, at: datetime) -> None:
    conn.execute(
        schedules.update()
        .where(
            schedules.c.id == schedule_id,
            sa.or_(schedules.c.last_successful_at.is_(None), schedules.c.last_successful_at < at),
        )
        .values(last_successful_at=at)
    )


def record_failure(
    conn: sa.Connection,
    schedule_id: str,
    at: datetime,
    *,
    code: str | None,
    message: str | None,
    run_id: str | None,
) -> None:
    conn.execute(
        schedules.update()
        .where(
            schedules.c.id == schedule_id,
            sa.or_(schedules.c.last_failure_at.is_(None), schedules.c.last_failure_at <= at),
        )
        .values(
            last_failure_at=at,
            last_failure_code=code,
            last_failure_message=message,
            last_failure_run_id=run_id,
        )
    )
