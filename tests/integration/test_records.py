"""Run records, projects, tokens and the event archive on SQLite and PostgreSQL, and the Redis
event log on the real Redis.

Store tests run inside one transaction that is rolled back at the end (the store never
commits, so nothing leaks between tests); each test also has a project of its own.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from runs.domain.errors import Unauthenticated
from runs.domain.events import NewEvent, RunEvent, log_event, started_events, terminal_event
from runs.domain.projects import Project, hash_token
from runs.domain.runs import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    AttemptRecord,
    ErrorCode,
    Run,
    RunError,
    RunRef,
    RunStatus,
)
from runs.domain.workflows import NodeStatus
from runs.persistence import event_archive, nodes, projects, records, transitions
from runs.persistence.cursors import decode_cursor, encode_cursor
from runs.persistence.records import RunFilters
from runs.persistence.tables import api_tokens
from runs.persistence.tables import runs as runs_table
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import EventRedis
from tests.support.redis_hygiene import QUEUE, own_project_id

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def conn(engine: sa.Engine, project: Project) -> Iterator[sa.Connection]:
    """A connection in a transaction that is rolled back (the project exists before it)."""
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


def run_values(project: Project, run_id: str | None = None, **changes: Any) -> dict[str, Any]:
    run_id = run_id or f"run_{uuid.uuid4()}"
    values: dict[str, Any] = {
        "run_id": run_id,
        "project_id": project.id,
        "kind": "task",
        "status": "pending",
        "owner_kind": "project",
        "owner_id": project.id,
        "parent_run_id": None,
        "root_run_id": run_id,
        "target": "task:echo",
        "queue": QUEUE,
        "artifacts": [],
        "attempt": 0,
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(changes)
    return values


def ref_of(values: dict[str, Any]) -> RunRef:
    return RunRef(values["project_id"], values["run_id"])


def insert(conn: sa.Connection, project: Project, **changes: Any) -> Run:
    values = run_values(project, **changes)
    insert_row(conn, values)
    found = records.get_run(conn, ref_of(values))
    assert found is not None
    return found


def lease_of(conn: sa.Connection, ref: RunRef) -> tuple[Any, Any]:
    row = conn.execute(
        sa.select(runs_table.c.lease_owner, runs_table.c.lease_expires_at).where(
            event_archive.of_run(runs_table, ref)
        )
    ).one()
    return row.lease_owner, row.lease_expires_at


def is_utc(moment: datetime | None) -> bool:
    return moment is not None and moment.utcoffset() == timedelta(0)


# -- runs: insert and read -----------------------------------------------------------------


def test_a_run_keeps_every_field_through_insert_and_get(
    conn: sa.Connection, project: Project
) -> None:
    plus_two = timezone(timedelta(hours=2))
    values = run_values(
        project,
        run_id="run_all-fields:" + uuid.uuid4().hex,
        kind="workflow",
        status="failed",
        parent_run_id="run_parent",
        root_run_id="run_root",
        name="A run with ünïcode ✓",
        waiting_reason="waiting for approval",
        metadata={"labels": {"team": "data"}, "n": [1, 2.5, None, True]},
        target="workflow:etl/daily",
        workflow_id="etl/daily",
        schedule_id="sch_1",
        batch_id="batch-7",
        runtime_target_kind="environment",
        runtime_target_environment_id="env_1",
        runtime_target_branch_id="main",
        input={"rows": [{"id": 1, "tags": []}], "big": 2**53, "ratio": 0.125, "ok": False},
        config=["a", {"b": None}],
        output="a plain string is JSON too",
        error={"message": "boom", "code": "E42", "detail": {"line": 3}},
        logs="line 1\nline 2\n",
        artifacts=[{"name": "report.csv", "size": 12}],
        duration_ms=2**40,
        exit_code=3,
        start_mode="immediate",
        timeout_seconds=600,
        backoff_limit=2,
        trigger_kind="schedule",
        trigger_id="trg_1",
        created_by="user@example.com",
        queue="slow",
        attempt=2,
        created_at=T0,
        updated_at=T0 + timedelta(seconds=5),
        started_at=datetime(2026, 3, 1, 14, 0, 1, 500, tzinfo=plus_two),
        completed_at=T0 + timedelta(seconds=4, microseconds=999999),
        cancel_requested_at=T0 + timedelta(seconds=3),
        cancel_stopped_at=T0 + timedelta(seconds=3, microseconds=250_000),
        attempts=[
            {
                "attempt": 1,
                "status": "failed",
                "error": {"message": "x"},
                "started_at": None,
                "finished_at": T0.isoformat(),
            }
        ],
        available_at=T0 + timedelta(seconds=1),
        attempt_started_at=T0 + timedelta(seconds=2),
    )
    insert_row(conn, values)
    run = records.get_run(conn, ref_of(values))
    assert run is not None
    typed = {
        "error": RunError("boom", code="E42", detail={"line": 3}),
        "attempts": (AttemptRecord(1, RunStatus.FAILED, RunError("x"), None, T0),),
    }
    for field in dataclasses.fields(Run):
        expected = typed.get(field.name, values.get(field.name))
        assert getattr(run, field.name) == expected, field.name
    assert run.kind.value == "workflow" and run.status is RunStatus.FAILED
    for moment in (run.created_at, run.updated_at, run.started_at, run.completed_at):
        assert is_utc(moment)
        assert moment is not None and moment.tzinfo is UTC
    assert run.started_at == datetime(2026, 3, 1, 12, 0, 1, 500, tzinfo=UTC)


def test_a_run_with_only_required_fields_reads_back_with_empty_defaults(
    conn: sa.Connection, project: Project
) -> None:
    run = insert(conn, project)
    assert run.input is None and run.output is None and run.error is None
    assert run.artifacts == [] and run.attempt == 0
    assert run.started_at is None and run.completed_at is None


def test_an_unknown_run_and_another_projects_run_of_the_same_id_are_none(
    conn: sa.Connection, project: Project, other_project: Project
) -> None:
    theirs = insert(conn, other_project)
    assert records.get_run(conn, RunRef(project.id, "run_nobody")) is None
    assert records.get_run(conn, RunRef(project.id, theirs.run_id)) is None


def test_a_naive_datetime_is_refused_rather_than_guessed(
    conn: sa.Connection, project: Project
) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive"):
        insert_row(conn, run_values(project, created_at=datetime(2026, 1, 1)))


def test_a_taken_run_id_is_an_integrity_error(conn: sa.Connection, project: Project) -> None:
    run = insert(conn, project)
    with pytest.raises(sa.exc.IntegrityError):
        insert_row(conn, run_values(project, run_id=run.run_id))


def test_the_same_run_id_in_two_projects_is_two_independent_runs(
    conn: sa.Connection, project: Project, other_project: Project
) -> None:
    mine = insert(conn, project, run_id="run_shared", config={"who": "me"})
    theirs = insert(conn, other_project, run_id="run_shared", config={"who": "them"})
    assert (mine.config, theirs.config) == ({"who": "me"}, {"who": "them"})
    event_archive.insert_events(conn, mine.ref, archived(2))
    event_archive.insert_events(conn, theirs.ref, archived(1))
    assert transitions.claim_run(conn, theirs.ref, worker="w", lease_until=T0, now=T0) is not None
    assert records.get_run(conn, mine.ref) == mine
    assert len(event_archive.list_events(conn, mine.ref, after=0, limit=10)) == 2
    assert len(event_archive.list_events(conn, theirs.ref, after=0, limit=10)) == 1


def test_the_store_never_commits(engine: sa.Engine, project: Project) -> None:
    values = run_values(project)
    with engine.connect() as connection:
        insert_row(connection, values)
        assert records.get_run(connection, ref_of(values)) is not None
        connection.rollback()
    with engine.connect() as connection:
        assert records.get_run(connection, ref_of(values)) is None


# -- claim ---------------------------------------------------------------------------------


def test_a_pending_run_is_claimed_once(conn: sa.Connection, project: Project) -> None:
    run = insert(conn, project)
    now = T0 + timedelta(seconds=1)
    lease_until = now + timedelta(seconds=30)
    first = transitions.claim_run(conn, run.ref, worker="w1", lease_until=lease_until, now=now)
    assert first is not None
    assert first.status is RunStatus.RUNNING and first.attempt == 1
    assert first.started_at == now and first.updated_at == now and is_utc(first.started_at)
    assert lease_of(conn, run.ref) == ("w1", lease_until)

    second = transitions.claim_run(conn, run.ref, worker="w2", lease_until=lease_until, now=now)
    assert second is None
    assert records.get_run(conn, run.ref) == first
    assert lease_of(conn, run.ref)[0] == "w1"


def test_each_claim_is_one_attempt_more_and_keeps_the_first_start_time(
    conn: sa.Connection, project: Project
) -> None:
    run = insert(conn, project)
    lease = T0 + timedelta(minutes=1)
    first = transitions.claim_run(conn, run.ref, worker="w1", lease_until=lease, now=T0)
    assert first is not None and first.attempt == 1
    # The sweeper puts a run whose lease expired back to pending.
    conn.execute(
        runs_table.update()
        .where(event_archive.of_run(runs_table, run.ref))
        .values(status="pending")
    )
    later = T0 + timedelta(minutes=2)
    second = transitions.claim_run(conn, run.ref, worker="w2", lease_until=lease, now=later)
    assert second is not None
    assert second.attempt == 2 and second.started_at == T0 and second.updated_at == later
    assert lease_of(conn, run.ref)[0] == "w2"


@pytest.mark.parametrize("status", ["running", "waiting", "completed", "failed", "cancelled"])
def test_only_a_pending_run_can_be_claimed(
    conn: sa.Connection, project: Project, status: str
) -> None:
    run = insert(conn, project, status=status, attempt=1)
    assert transitions.claim_run(conn, run.ref, worker="w", lease_until=T0, now=T0) is None
    assert records.get_run(conn, run.ref) == run


def test_claiming_an_unknown_run_is_none(
    conn: sa.Connection, project: Project, other_project: Project
) -> None:
    theirs = insert(conn, other_project)
    for ref in (RunRef(project.id, "run_nobody"), RunRef(project.id, theirs.run_id)):
        assert transitions.claim_run(conn, ref, worker="w", lease_until=T0, now=T0) is None
    assert records.get_run(conn, theirs.ref) == theirs


# -- finish --------------------------------------------------------------------------------


def finish_values(status: str = "completed", **changes: Any) -> dict[str, Any]:
    done = T0 + timedelta(seconds=9)
    values: dict[str, Any] = {
        "status": status,
        "output": {"answer": 42},
        "error": None,
        "logs": "done\n",
        "artifacts": [{"name": "out.txt"}],
        "exit_code": 0,
        "duration_ms": 9000,
        "completed_at": done,
        "updated_at": done,
        "attempts": [{"attempt": 1, "status": status, "finished_at": done.isoformat()}],
    }
    values.update(changes)
    return values


def claimed(conn: sa.Connection, project: Project) -> Run:
    run = insert(conn, project)
    taken = transitions.claim_run(conn, run.ref, worker="w", lease_until=T0, now=T0)
    assert taken is not None
    return taken


def test_finishing_the_running_attempt_writes_the_terminal_record_and_drops_the_lease(
    conn: sa.Connection, project: Project
) -> None:
    run = claimed(conn, project)
    assert transitions.finish_run(conn, run.ref, run.attempt, finish_values(), archived(2))
    assert event_archive.list_events(conn, run.ref, after=0, limit=10) == archived(2)
    done = records.get_run(conn, run.ref)
    assert done is not None
    assert done.status is RunStatus.COMPLETED and done.output == {"answer": 42}
    assert done.artifacts == [{"name": "out.txt"}] and done.logs == "done\n"
    assert done.exit_code == 0 and done.duration_ms == 9000
    assert done.completed_at == T0 + timedelta(seconds=9) and done.attempt == 1
    assert lease_of(conn, run.ref) == (None, None)


@pytest.mark.parametrize("stale_attempt", [0, 2, 7])
def test_a_stale_attempt_cannot_finish_the_run(
    conn: sa.Connection, project: Project, stale_attempt: int
) -> None:
    run = claimed(conn, project)
    assert not transitions.finish_run(
        conn, run.ref, stale_attempt, finish_values("failed"), archived(2)
    )
    assert records.get_run(conn, run.ref) == run
    assert lease_of(conn, run.ref)[0] == "w"


def test_a_finish_that_changes_nothing_archives_no_events(
    conn: sa.Connection, project: Project
) -> None:
    run = claimed(conn, project)
    assert not transitions.finish_run(conn, run.ref, run.attempt + 1, finish_values(), archived(3))
    assert event_archive.list_events(conn, run.ref, after=0, limit=10) == []
    assert transitions.finish_run(conn, run.ref, run.attempt, finish_values(), [])
    assert records.get_run(conn, run.ref).status is RunStatus.COMPLETED  # type: ignore[union-attr]


def test_a_pending_run_cannot_be_finished(conn: sa.Connection, project: Project) -> None:
    run = insert(conn, project, status="pending", attempt=1)
    assert not transitions.finish_run(conn, run.ref, 1, finish_values(), archived(2))
    assert records.get_run(conn, run.ref) == run


def test_a_waiting_run_can_be_finished(conn: sa.Connection, project: Project) -> None:
    """A workflow parked on a wait ends when the wait times out."""
    run = insert(conn, project, status="waiting", attempt=1)
    assert transitions.finish_run(conn, run.ref, 1, finish_values("failed"), archived(2))


def test_finishing_an_unknown_run_is_false(
    conn: sa.Connection, project: Project, other_project: Project
) -> None:
    theirs = insert(conn, other_project, status="running", attempt=1)
    assert not transitions.finish_run(
        conn, RunRef(project.id, "run_nobody"), 1, finish_values(), archived(2)
    )
    assert not transitions.finish_run(
        conn, RunRef(project.id, theirs.run_id), 1, finish_values(), archived(2)
    )
    assert records.get_run(conn, theirs.ref) == theirs


# -- cancel --------------------------------------------------------------------------------


CANCEL_AT = T0 + timedelta(seconds=2)


def cancel_values() -> dict[str, Any]:
    return {
        "completed_at": CANCEL_AT,
        "updated_at": CANCEL_AT,
        "error": {"message": "Run cancelled", "code": "cancelled"},
    }


@pytest.mark.parametrize("status", sorted(s.value for s in ACTIVE_STATUSES))
def test_an_active_run_can_be_cancelled(conn: sa.Connection, project: Project, status: str) -> None:
    run = insert(conn, project, status=status)
    conn.execute(
        runs_table.update()
        .where(event_archive.of_run(runs_table, run.ref))
        .values(lease_owner="w", lease_expires_at=T0)
    )
    cancelled = transitions.cancel_run(conn, run.ref, CANCEL_AT, cancel_values())
    assert cancelled is not None
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.completed_at == T0 + timedelta(seconds=2) and is_utc(cancelled.completed_at)
    assert cancelled.error == RunError("Run cancelled", code=ErrorCode.CANCELLED)
    assert cancelled.cancel_requested_at == CANCEL_AT
    assert records.get_run(conn, run.ref) == cancelled
    if status == "running":  # its worker still has to stop: the lease stays until it says so
        assert cancelled.cancel_stopped_at is None
        assert lease_of(conn, run.ref) == ("w", T0)
    else:
        assert cancelled.cancel_stopped_at == CANCEL_AT
        assert lease_of(conn, run.ref) == (None, None)


def test_a_cancelled_run_cannot_be_cancelled_again(conn: sa.Connection, project: Project) -> None:
    run = insert(conn, project)
    first = transitions.cancel_run(conn, run.ref, CANCEL_AT, cancel_values())
    assert first is not None
    assert (
        transitions.cancel_run(conn, run.ref, T0, {"updated_at": T0 + timedelta(hours=1)}) is None
    )
    assert records.get_run(conn, run.ref) == first


def test_cancelling_an_unknown_run_is_none(
    conn: sa.Connection, project: Project, other_project: Project
) -> None:
    theirs = insert(conn, other_project)
    for ref in (RunRef(project.id, "run_nobody"), RunRef(project.id, theirs.run_id)):
        assert transitions.cancel_run(conn, ref, CANCEL_AT, cancel_values()) is None
    assert records.get_run(conn, theirs.ref) == theirs


# -- invariant 2: terminal is final --------------------------------------------------------


@pytest.mark.parametrize("status", sorted(s.value for s in TERMINAL_STATUSES))
def test_a_terminal_run_never_changes_whatever_is_tried(
    conn: sa.Connection, project: Project, status: str
) -> None:
    run = insert(
        conn,
        project,
        status=status,
        attempt=1,
        output={"final": True},
        started_at=T0,
        completed_at=T0 + timedelta(seconds=1),
    )
    later = T0 + timedelta(hours=1)
    assert transitions.claim_run(conn, run.ref, worker="w", lease_until=later, now=later) is None
    for attempt in (0, 1, 2):
        for outcome in ("completed", "failed", "cancelled"):
            assert not transitions.finish_run(
                conn, run.ref, attempt, finish_values(outcome, output={"late": True}), archived(2)
            )
    assert transitions.cancel_run(conn, run.ref, CANCEL_AT, cancel_values()) is None
    assert records.get_run(conn, run.ref) == run
    assert lease_of(conn, run.ref) == (None, None)


def test_a_late_finish_after_cancel_changes_nothing(conn: sa.Connection, project: Project) -> None:
    run = claimed(conn, project)
    cancelled = transitions.cancel_run(conn, run.ref, CANCEL_AT, cancel_values())
    assert cancelled is not None
    assert not transitions.finish_run(conn, run.ref, run.attempt, finish_values(), archived(2))
    assert records.get_run(conn, run.ref) == cancelled


# -- list ----------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_then_by_run_id_descending(
    conn: sa.Connection, project: Project
) -> None:
    t1, t2 = T0, T0 + timedelta(microseconds=1)
    for run_id, created in [("run_b", t1), ("run_d", t2), ("run_a", t1), ("run_c", t2)]:
        insert(conn, project, run_id=f"{run_id}-{project.id}", created_at=created)
    listed = records.list_runs(conn, project.id, RunFilters(), before=None, limit=10)
    assert [r.run_id.split("-")[0] for r in listed] == ["run_d", "run_c", "run_b", "run_a"]


def test_keyset_paging_visits_every_run_exactly_once(conn: sa.Connection, project: Project) -> None:
    expected = []
    for i in range(23):
        created = T0 + timedelta(seconds=i // 4)  # ties on created_at, broken by run_id
        expected.append(
            insert(
                conn, project, run_id=f"run_{i:02d}_{uuid.uuid4().hex[:6]}", created_at=created
            ).run_id
        )
    seen: list[str] = []
    before: tuple[datetime, str] | None = None
    for _ in range(30):
        page = records.list_runs(conn, project.id, RunFilters(), before=before, limit=4)
        seen.extend(r.run_id for r in page)
        if len(page) < 4:
            break
        before = decode_cursor(encode_cursor(page[-1].created_at, page[-1].run_id))  # as the API
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == set(expected)
    ordered = records.list_runs(conn, project.id, RunFilters(), before=None, limit=100)
    assert seen == [r.run_id for r in ordered]


def test_before_is_exclusive(conn: sa.Connection, project: Project) -> None:
    newer = insert(conn, project, created_at=T0 + timedelta(seconds=1))
    older = insert(conn, project)
    after_newer = records.list_runs(
        conn, project.id, RunFilters(), before=(newer.created_at, newer.run_id), limit=10
    )
    assert [r.run_id for r in after_newer] == [older.run_id]
    assert (
        records.list_runs(
            conn, project.id, RunFilters(), before=(older.created_at, older.run_id), limit=10
        )
        == []
    )


def test_a_project_lists_only_its_own_runs(
    other_project: Project, project: Project, conn: sa.Connection
) -> None:
    mine = insert(conn, project)
    insert(conn, other_project)
    listed = records.list_runs(conn, project.id, RunFilters(), before=None, limit=10)
    assert [r.run_id for r in listed] == [mine.run_id]


def test_list_filters_by_status_kind_target_and_parent(
    conn: sa.Connection, project: Project
) -> None:
    root = insert(conn, project, run_id=f"root-{project.id}", status="running")
    child = insert(
        conn,
        project,
        run_id=f"child-{project.id}",
        parent_run_id=root.run_id,
        root_run_id=root.run_id,
        status="completed",
        target="task:sleep",
        created_at=T0 + timedelta(seconds=1),
    )
    flow = insert(
        conn,
        project,
        run_id=f"flow-{project.id}",
        kind="workflow",
        target="workflow:etl",
        status="failed",
        created_at=T0 + timedelta(seconds=2),
    )

    def ids(**filters: Any) -> list[str]:
        found = records.list_runs(conn, project.id, RunFilters(**filters), before=None, limit=10)
        return [r.run_id for r in found]

    assert ids() == [flow.run_id, child.run_id, root.run_id]
    assert ids(statuses=("running",)) == [root.run_id]
    assert ids(statuses=("completed", "failed")) == [flow.run_id, child.run_id]
    assert ids(kinds=("workflow",)) == [flow.run_id]
    assert ids(kinds=("task",)) == [child.run_id, root.run_id]
    assert ids(targets=("task:sleep", "workflow:etl")) == [flow.run_id, child.run_id]
    assert ids(parent_run_id=root.run_id) == [child.run_id]
    assert ids(root_only=True) == [flow.run_id, root.run_id]
    assert ids(statuses=("completed",), kinds=("workflow",)) == []
    assert ids(statuses=("pending",)) == []
    assert ids(targets=("task:nope",)) == []


def test_list_honours_the_limit(conn: sa.Connection, project: Project) -> None:
    for i in range(5):
        insert(conn, project, created_at=T0 + timedelta(seconds=i))
    assert len(records.list_runs(conn, project.id, RunFilters(), before=None, limit=3)) == 3


# -- archived events -----------------------------------------------------------------------


def archived(count: int) -> list[RunEvent]:
    return [
        RunEvent(
            event_id=i,
            event_type="RUN_LOG_CAPTURED",
            payload={"type": "RUN_LOG_CAPTURED", "logs": f"line {i}", "n": [i, None]},
            created_at=T0 + timedelta(milliseconds=i),
        )
        for i in range(1, count + 1)
    ]


def test_archived_events_read_back_in_order_with_exclusive_after_and_a_limit(
    conn: sa.Connection, project: Project
) -> None:
    run = insert(conn, project)
    other = insert(conn, project)
    events = archived(6)
    event_archive.insert_events(conn, run.ref, events)
    event_archive.insert_events(conn, other.ref, archived(3))

    assert event_archive.list_events(conn, run.ref, after=0, limit=100) == events
    assert [e.event_id for e in event_archive.list_events(conn, run.ref, after=2, limit=100)] == [
        3,
        4,
        5,
        6,
    ]
    assert [e.event_id for e in event_archive.list_events(conn, run.ref, after=1, limit=2)] == [
        2,
        3,
    ]
    assert event_archive.list_events(conn, run.ref, after=6, limit=100) == []
    assert event_archive.list_events(conn, run.ref, after=99, limit=100) == []
    for event in event_archive.list_events(conn, run.ref, after=0, limit=100):
        assert is_utc(event.created_at)


def test_inserting_no_events_is_a_no_op(conn: sa.Connection, project: Project) -> None:
    run = insert(conn, project)
    event_archive.insert_events(conn, run.ref, [])
    assert event_archive.list_events(conn, run.ref, after=0, limit=10) == []


def test_an_event_id_is_archived_once_per_run(conn: sa.Connection, project: Project) -> None:
    run = insert(conn, project)
    event_archive.insert_events(conn, run.ref, archived(2))
    with pytest.raises(sa.exc.IntegrityError):
        event_archive.insert_events(conn, run.ref, archived(1))


# -- what workers write is stored readable ------------------------------------------------

UNCLEAN = "a \ud800 b \x00 c"
CLEANED = "a \ufffd b \ufffd c"


def test_a_terminal_record_with_invalid_text_and_nan_is_stored_cleaned(
    conn: sa.Connection, project: Project
) -> None:
    run = claimed(conn, project)
    values = finish_values(
        "failed",
        output={UNCLEAN: [UNCLEAN, float("nan")]},
        error={"message": UNCLEAN, "code": "x", "detail": {"n": float("inf")}},
        logs=UNCLEAN,
        artifacts=[{"name": UNCLEAN}],
        attempts=[
            {
                "attempt": 1,
                "status": "failed",
                "error": {"message": UNCLEAN},
                "finished_at": T0.isoformat(),
            }
        ],
    )
    assert transitions.finish_run(conn, run.ref, run.attempt, values, archived(2))
    done = records.get_run(conn, run.ref)
    assert done is not None
    assert done.output == {CLEANED: [CLEANED, None]}
    assert done.error == RunError(CLEANED, code="x", detail={"n": None})
    assert (done.logs, done.artifacts) == (CLEANED, [{"name": CLEANED}])
    assert done.attempts[0].error.message == CLEANED


def test_events_and_node_values_with_invalid_text_are_stored_cleaned(
    conn: sa.Connection, project: Project
) -> None:
    run = insert(conn, project, kind="workflow")
    event = RunEvent(1, "NOTE", {UNCLEAN: UNCLEAN, "n": float("nan")}, T0)
    event_archive.insert_events(conn, run.ref, [event])
    assert event_archive.list_events(conn, run.ref, after=0, limit=10)[0].payload == {
        CLEANED: CLEANED,
        "n": None,
    }
    nodes.insert_nodes(conn, run.ref, ["a"], T0)
    moved = nodes.transition(
        conn,
        run.ref,
        "a",
        [NodeStatus.PENDING],
        {"status": "failed", "output": [UNCLEAN], "error": {"message": UNCLEAN}, "logs": UNCLEAN},
    )
    assert moved
    node = nodes.get_nodes(conn, run.ref)["a"]
    assert (node.output, node.error, node.logs) == ([CLEANED], RunError(CLEANED), CLEANED)


# -- projects and tokens -------------------------------------------------------------------


def test_a_token_finds_its_project_by_hash(
    engine: sa.Engine, access: AccessService, project: Project
) -> None:
    _, secret = access.create_token(project.slug)
    with engine.connect() as connection:
        assert projects.project_for_token(connection, hash_token(secret)) == project
        assert projects.project_for_token(connection, secret) is None
        assert projects.project_for_token(connection, hash_token(secret + "x")) is None


def test_a_revoked_token_is_refused(
    engine: sa.Engine, access: AccessService, project: Project
) -> None:
    token, secret = access.create_token(project.slug)
    kept, kept_secret = access.create_token(project.slug, "kept")
    with engine.begin() as connection:
        assert projects.revoke_token(connection, token.id, T0)
        assert not projects.revoke_token(connection, token.id, T0)  # once only
    with engine.connect() as connection:
        assert projects.project_for_token(connection, hash_token(secret)) is None
        assert projects.project_for_token(connection, hash_token(kept_secret)) == project
        listed = {t.id: t.revoked_at for t in projects.list_tokens(connection, project.id)}
    assert listed == {token.id: T0, kept.id: None}
    with pytest.raises(Unauthenticated):
        access.authenticate(secret)
    assert access.authenticate(kept_secret) == project


def test_a_revoked_token_is_refused_at_once_by_the_process_that_revoked_it_despite_its_cache(
    engine: sa.Engine, project: Project
) -> None:
    revoking = AccessService(engine, cache_seconds=3600)
    uncached = AccessService(engine, cache_seconds=0)
    cached_elsewhere = AccessService(engine, cache_seconds=3600)
    token, secret = revoking.create_token(project.slug)
    for access in (revoking, uncached, cached_elsewhere):
        assert access.authenticate(secret) == project
    revoking.revoke_token(token.id)
    for access in (revoking, uncached):
        with pytest.raises(Unauthenticated):
            access.authenticate(secret)
    # Another process with a cache accepts it until its cache entry ends (RUNS_AUTH_CACHE_SECONDS).
    assert cached_elsewhere.authenticate(secret) == project


def test_the_token_secret_never_appears_in_the_tokens_table(
    engine: sa.Engine, access: AccessService, project: Project
) -> None:
    token, secret = access.create_token(project.slug, "ci")
    random_part = secret.removeprefix("runs_")
    with engine.connect() as connection:
        rows = connection.execute(sa.select(api_tokens)).mappings().all()
    ours = [r for r in rows if r["id"] == token.id]
    assert len(ours) == 1 and ours[0]["token_hash"] == hash_token(secret)
    for row in rows:
        for column, value in row.items():
            text = str(value)
            assert secret not in text, column
            assert random_part not in text, column
            assert random_part[:16] not in text, column


def test_projects_are_found_by_id_or_slug(conn: sa.Connection, project: Project) -> None:
    assert projects.find_project(conn, project.id) == project
    assert projects.find_project(conn, project.slug) == project
    assert projects.find_project(conn, str(uuid.uuid4())) is None
    assert projects.find_project(conn, "no-such-project") is None
    assert is_utc(project.created_at)


# -- the Redis event log -------------------------------------------------------------------


@pytest.fixture
def event_log(event_redis: EventRedis) -> RedisEventLog:
    """The tests of the event log run on a single Redis and on a Redis Cluster."""
    return event_redis.log


@pytest.fixture
def ref(event_log: RedisEventLog) -> Iterator[RunRef]:
    ref = RunRef(own_project_id(), f"run_{uuid.uuid4()}")
    yield ref
    event_log.client.delete(f"runs:{{{ref.key}}}:events", f"runs:{{{ref.key}}}:meta")


def test_event_ids_start_at_one_and_increase_by_one(event_log: RedisEventLog, ref: RunRef) -> None:
    assert event_log.append(ref, started_events("task:echo")) == [1, 2]
    assert event_log.append(ref, [log_event("a")]) == [3]
    assert event_log.append(ref, []) == []
    read = event_log.read(ref, after=0, limit=100)
    assert [e.event_id for e in read] == [1, 2, 3]
    assert [e.event_type for e in read] == ["RUN_STARTED", "STEP_STARTED", "RUN_LOG_CAPTURED"]
    assert read[2].payload == {"type": "RUN_LOG_CAPTURED", "logs": "a"}
    assert all(is_utc(e.created_at) for e in read)


def test_concurrent_appends_get_distinct_strictly_increasing_ids(
    event_log: RedisEventLog, ref: RunRef
) -> None:
    threads_count, rounds = 8, 25
    per_thread: list[list[int]] = [[] for _ in range(threads_count)]
    start = threading.Barrier(threads_count)

    def append(index: int) -> None:
        start.wait()
        for i in range(rounds):
            batch = [log_event(f"{index}-{i}-a"), log_event(f"{index}-{i}-b")]
            per_thread[index].extend(event_log.append(ref, batch))

    threads = [threading.Thread(target=append, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    total = threads_count * rounds * 2
    all_ids = sorted(i for ids in per_thread for i in ids)
    assert all_ids == list(range(1, total + 1))
    for ids in per_thread:
        assert ids == sorted(ids) and len(ids) == rounds * 2
        # a batch takes consecutive ids: nothing interleaves inside one append
        assert all(ids[k + 1] == ids[k] + 1 for k in range(0, len(ids), 2))
    read = event_log.read(ref, after=0, limit=total + 10)
    assert [e.event_id for e in read] == list(range(1, total + 1))
    for event in read:
        writer, i, half = event.payload["logs"].split("-")
        position = per_thread[int(writer)].index(event.event_id)
        assert position == int(i) * 2 + (half == "b")


def test_read_after_is_exclusive_and_limited(event_log: RedisEventLog, ref: RunRef) -> None:
    event_log.append(ref, [log_event(str(i)) for i in range(1, 8)])
    assert [e.event_id for e in event_log.read(ref, after=3, limit=100)] == [4, 5, 6, 7]
    assert [e.event_id for e in event_log.read(ref, after=3, limit=2)] == [4, 5]
    assert event_log.read(ref, after=7, limit=100) == []
    assert event_log.read(RunRef(ref.project_id, "run_never"), after=0, limit=100) == []
    # The same run id in another project is another stream.
    assert event_log.read(RunRef(str(uuid.uuid4()), ref.run_id), after=0, limit=100) == []


def test_closing_refuses_later_appends_and_reserves_the_next_ids(
    event_log: RedisEventLog, ref: RunRef
) -> None:
    event_log.append(ref, started_events("task:echo"))
    event_log.append(ref, [log_event("x")])
    first, so_far = event_log.close(ref, 2)
    assert first == 4
    assert [e.event_id for e in so_far] == [1, 2, 3]
    assert so_far == event_log.read(ref, after=0, limit=10)
    assert event_log.append(ref, [log_event("too late")]) == []
    assert [e.event_id for e in event_log.read(ref, after=0, limit=10)] == [1, 2, 3]
    assert event_log.cancel_requested([(ref, None)]) == set()


def test_closing_a_run_with_no_events_reserves_from_one(
    event_log: RedisEventLog, ref: RunRef
) -> None:
    first, so_far = event_log.close(ref, 1, cancel=True)
    assert (first, so_far) == (1, [])
    other = (RunRef(str(uuid.uuid4()), ref.run_id), None)
    assert event_log.cancel_requested([(ref, None), other]) == {(ref, None)}
    assert event_log.cancel_requested([]) == set()


def test_a_stop_request_for_one_node_flags_only_that_node(
    event_log: RedisEventLog, ref: RunRef
) -> None:
    event_log.request_stop(ref, "slow")
    watched = [(ref, "slow"), (ref, "fast"), (ref, None)]
    assert event_log.cancel_requested(watched) == {(ref, "slow")}


def test_publish_adds_the_final_events_last_and_lets_the_stream_expire(
    event_log: RedisEventLog, ref: RunRef
) -> None:
    event_log.append(ref, started_events("task:echo"))
    first, _ = event_log.close(ref, 2)
    now = datetime.now(UTC).replace(microsecond=0)
    final_new: list[NewEvent] = [log_event("bye"), terminal_event("completed")]
    final = [RunEvent(first + i, e.event_type, e.payload, now) for i, e in enumerate(final_new)]
    event_log.publish(ref, final)
    read = event_log.read(ref, after=0, limit=10)
    assert [e.event_id for e in read] == [1, 2, 3, 4]
    assert read[-2:] == final
    assert read[-1].event_type == "RUN_FINISHED"
    assert event_log.read(ref, after=3, limit=10) == final[1:]
    for key in (f"runs:{{{ref.key}}}:events", f"runs:{{{ref.key}}}:meta"):
        assert 0 < int(event_log.client.ttl(key)) <= 3600
    assert event_log.append(ref, [log_event("after publish")]) == []


def insert_row(conn: sa.Connection, values: dict[str, Any]) -> None:
    """A run's row as written by hand (what the store reads back is under test here)."""
    conn.execute(runs_table.insert(), values)
