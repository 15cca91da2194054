"""Retention: finished runs past the retention period are deleted with everything that is
theirs (events, nodes, firings, Redis keys), by pruners that may run at once; nothing else is.

Each backend gets a database of its own (a pruner deletes every old run it finds), emptied
after each test; the Redis keys are on the real Redis, then on a Redis Cluster.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runs.domain import events as ev
from runs.domain.clock import utcnow
from runs.domain.definitions import Definition
from runs.domain.projects import Project
from runs.domain.runs import Outcome, RunError, RunRef, RunStatus
from runs.messaging.routing import Router
from runs.persistence import migrate
from runs.persistence.engine import create_engine
from runs.persistence.tables import (
    run_events,
    runs,
    schedule_firings,
    schedules,
    workflow_nodes,
)
from runs.services.access import AccessService
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.recovery import RecoveryService
from runs.services.retention import RetentionService
from runs.services.runs import RunService
from runs.settings import Settings
from runs.streams.connections import EventClient
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from runs.wiring import wire
from tests.conftest import POSTGRES_URL, TEST_TARGETS, EventRedis, base_settings, note_projects
from tests.support.helpers import task_request
from workers.definitions.registry import Registry
from workers.sweeper import Sweeper

TTL = 3600
BULK_RUNS = 10_000
RUN_TABLES = (run_events, workflow_nodes, schedule_firings)


# -- a database of its own per backend -----------------------------------------------------


def _postgres_database() -> Iterator[str]:
    admin_url = sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    name = f"runs_retention_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc.orig}")
    try:
        url = admin_url.set(database=name).render_as_string(hide_password=False)
        migrate.upgrade(url)
        yield url
        note_projects(url)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def own_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('retention') / 'runs.db'}"
        migrate.upgrade(url)
        yield url
    else:
        yield from _postgres_database()


@pytest.fixture(scope="module")
def store(own_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(own_url)
    DefinitionCatalog(engine, cache_seconds=0).register(
        Definition(target=t, kind="task") for t in TEST_TARGETS
    )
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def emptied(store: sa.Engine) -> Iterator[None]:
    yield
    with store.begin() as conn:
        for table in (*RUN_TABLES, schedules, runs):
            conn.execute(table.delete())


@pytest.fixture
def me(store: sa.Engine) -> Project:
    return AccessService(store).create_project(f"r-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def log(event_redis: EventRedis) -> Iterator[RedisEventLog]:
    created = RedisEventLog.from_url(event_redis.url, ttl_seconds=TTL, cluster=event_redis.cluster)
    yield created
    created.client.close()


def run_service(store: sa.Engine, log: RedisEventLog) -> RunService:
    return RunService(
        store,
        dispatcher=RecordingDispatcher(sent=[]),
        events=log,
        router=Router([], "runs"),
        catalog=DefinitionCatalog(store, cache_seconds=0),
        max_input_bytes=4096,
    )


def attempt_service(store: sa.Engine, log: RedisEventLog, ahead: float = 0) -> AttemptService:
    return AttemptService(
        store,
        dispatcher=RecordingDispatcher(sent=[]),
        events=log,
        clock=lambda: utcnow() + timedelta(seconds=ahead),
    )


def sweeper(store: sa.Engine, log: RedisEventLog, ahead: float = 0) -> RecoveryService:
    return RecoveryService(
        store,
        attempts=attempt_service(store, log, ahead),
        dispatcher=RecordingDispatcher(sent=[]),
        events=log,
        clock=lambda: utcnow() + timedelta(seconds=ahead),
    )


def pruner(store: sa.Engine, log: RedisEventLog, ahead: float = 0) -> RetentionService:
    return RetentionService(store, events=log, clock=lambda: utcnow() + timedelta(seconds=ahead))


# -- runs made through the service, one per terminal path ----------------------------------


def end_through_every_path(store: sa.Engine, log: RedisEventLog, project: Project) -> list[RunRef]:
    """One run ended by each path that can end one, with its events in Redis."""
    service, attempts = run_service(store, log), attempt_service(store, log)

    def submitted() -> Any:
        return service.create(project, task_request(project))[0]

    def started(lease_seconds: float = 30) -> Any:
        claimed = attempts.claim(submitted().ref, owner="w", lease_seconds=lease_seconds)
        assert claimed is not None and attempts.open_attempt(
            claimed, ev.started_events("echo"), owner="w"
        )
        assert attempts.emit(claimed.ref, [ev.log_event("working")])
        return claimed

    # The sweeper's expiry of a run that waited too long (first: it takes every old pending run).
    expired = submitted()
    assert sweeper(store, log, ahead=120).expire_stale(ttl_seconds=60) == 1
    completed, failed = started(), started()
    assert attempts.finish(completed, Outcome(RunStatus.COMPLETED, output={"ok": True}), owner="w")
    assert attempts.finish(failed, Outcome(RunStatus.FAILED, error=RunError("boom")), owner="w")
    cancelled_pending = submitted()
    assert service.cancel(project, cancelled_pending.run_id)[0]
    cancelled_running = started()
    assert service.cancel(project, cancelled_running.run_id)[0]
    assert attempts.record_stop(cancelled_running)
    # The sweeper's end of a run whose worker died with no attempt left.
    lost = started(lease_seconds=1)
    later = sweeper(store, log, ahead=120)
    assert later.reclaim_expired(max_attempts=lambda run: 1, backoff=lambda n: 0.0) == 1
    # A cancel that lost to the run's own end, after its keys had expired already.
    stale = started()
    assert attempts.finish(stale, Outcome(RunStatus.COMPLETED), owner="w")
    log.forget([stale.ref])
    assert not service.cancel_run(stale)[0]
    refs = [expired, completed, failed, cancelled_pending, cancelled_running, lost, stale]
    return [r.ref for r in refs]


def keys_of(client: EventClient, project: Project) -> list[bytes]:
    """On a cluster, redis-py's ``scan_iter`` scans every primary."""
    return list(client.scan_iter(match=f"runs:{{{project.id}/*", count=1000))


def test_every_terminal_path_lets_the_runs_redis_keys_expire(
    store: sa.Engine, log: RedisEventLog, me: Project
) -> None:
    refs = end_through_every_path(store, log, me)
    keys = keys_of(log.client, me)
    # Each run's stream and meta key, but the stream of the last one: it had expired already.
    assert len(keys) == 2 * len(refs) - 1
    for key in keys:
        assert 0 < log.client.ttl(key) <= TTL, key
    with store.connect() as conn:
        statuses = conn.execute(sa.select(runs.c.status).where(runs.c.project_id == me.id))
        assert all(RunStatus(s).is_terminal for s in statuses.scalars())


# -- ten thousand finished runs --------------------------------------------------------------


def run_row(
    project_id: str, run_id: str, completed_at: datetime | None, **changes: Any
) -> dict[str, Any]:
    created = (completed_at or utcnow()) - timedelta(seconds=5)
    row = {
        "project_id": project_id,
        "run_id": run_id,
        "kind": "task",
        "status": RunStatus.COMPLETED.value if completed_at else RunStatus.PENDING.value,
        "owner_kind": "project",
        "owner_id": project_id,
        "parent_run_id": None,
        "root_run_id": run_id,
        "target": "task:echo",
        "schedule_id": None,
        "queue": "runs",
        "artifacts": [],
        "attempt": 1 if completed_at else 0,
        "attempts": [{"attempt": 1, "status": "completed"}] if completed_at else None,
        "lease_owner": None,
        "created_at": created,
        "updated_at": completed_at or created,
        "completed_at": completed_at,
    }
    row.update(changes)
    return row


def event_rows(row: dict[str, Any], count: int = 3) -> list[dict[str, Any]]:
    return [
        {
            "project_id": row["project_id"],
            "run_id": row["run_id"],
            "event_id": n,
            "event_type": "RUN_LOG_CAPTURED",
            "payload": {"n": n},
            "created_at": row["created_at"],
        }
        for n in range(1, count + 1)
    ]


def node_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "project_id": row["project_id"],
            "run_id": row["run_id"],
            "node_id": node,
            "position": position,
            "status": "completed",
            "updated_at": row["updated_at"],
        }
        for position, node in enumerate(("a", "b"))
    ]


def schedule_row(project_id: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": f"sch_{uuid.uuid4().hex[:12]}",
        "project_id": project_id,
        "name": "nightly",
        "target": "task:echo",
        "status": "active",
        "timezone": "UTC",
        "interval_seconds": 60,
        "concurrency_policy": "allow",
        "catchup": "none",
        "definition_source": "api",
        "created_at": now,
        "updated_at": now,
    }


def firing_row(run: dict[str, Any], *, settled: bool) -> dict[str, Any]:
    return {
        "schedule_id": run["schedule_id"],
        "project_id": run["project_id"],
        "scheduled_for": run["created_at"],
        "outcome": "created",
        "run_id": run["run_id"],
        "settled": settled,
        "created_at": run["created_at"],
    }


def insert(store: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        with store.begin() as conn:
            conn.execute(table.insert(), rows)


def bulk_finished_runs(store: sa.Engine, project: Project, count: int) -> None:
    """``count`` runs that finished an hour ago, the way the store holds them: task and
    workflow runs (with nodes), trees of parents and children, runs of a schedule (settled),
    each with three archived events."""
    finished = utcnow() - timedelta(hours=1)
    schedule = schedule_row(project.id)
    rows: list[dict[str, Any]] = []
    for n in range(count):
        run_id = f"run_bulk_{n:05d}"
        changes: dict[str, Any] = {}
        if n % 10 == 1:  # a child of the run before it, and of its root
            parent = rows[-1]
            changes = {"parent_run_id": parent["run_id"], "root_run_id": parent["root_run_id"]}
        elif n % 10 == 2:
            changes = {"kind": "workflow", "target": "workflow:pipeline"}
        elif n % 10 == 3:
            changes = {"schedule_id": schedule["id"], "status": RunStatus.FAILED.value}
        elif n % 10 == 4:
            changes = {"status": RunStatus.CANCELLED.value}
        rows.append(run_row(project.id, run_id, finished - timedelta(seconds=n), **changes))
    insert(store, schedules, [schedule])
    insert(store, runs, rows)
    insert(store, run_events, [e for row in rows for e in event_rows(row)])
    insert(
        store,
        workflow_nodes,
        [n for row in rows if row["kind"] == "workflow" for n in node_rows(row)],
    )
    insert(store, schedule_firings, [firing_row(r, settled=True) for r in rows if r["schedule_id"]])


def rows_of(store: sa.Engine, project: Project) -> dict[str, int]:
    with store.connect() as conn:
        return {
            table.name: conn.execute(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.project_id == project.id)
            ).scalar_one()
            for table in (runs, *RUN_TABLES)
        }


def test_with_no_retention_left_ten_thousand_finished_runs_leave_no_rows_or_keys_behind(
    store: sa.Engine, log: RedisEventLog, me: Project
) -> None:
    bulk_finished_runs(store, me, BULK_RUNS)
    through_service = end_through_every_path(store, log, me)
    assert len(keys_of(log.client, me)) == 2 * len(through_service) - 1
    total = BULK_RUNS + len(through_service)
    assert rows_of(store, me)["runs"] == total

    # Two pruners at once, starting together, in batches small enough to interleave.
    start = threading.Barrier(2)
    deleted: list[int] = []
    failures: list[BaseException] = []

    def prune() -> None:
        try:
            start.wait()
            # Later than the sweeper's ends above, which it made 120 s ahead.
            found = pruner(store, log, ahead=300).prune(
                older_than=timedelta(0), batch_size=250, max_batches=1_000
            )
            deleted.append(found)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=prune) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a pruner hung"
    assert failures == []
    assert sum(deleted) == total  # each run deleted once, by one of them
    assert rows_of(store, me) == {
        "runs": 0,
        "run_events": 0,
        "workflow_nodes": 0,
        "schedule_firings": 0,
    }
    assert keys_of(log.client, me) == []


# -- what survives ---------------------------------------------------------------------------


def test_runs_not_finished_or_finished_recently_survive_and_trees_go_children_first(
    store: sa.Engine, log: RedisEventLog, me: Project
) -> None:
    now = utcnow()
    old, young = now - timedelta(days=2), now - timedelta(hours=1)
    schedule = schedule_row(me.id)

    def row(run_id: str, completed_at: datetime | None, **changes: Any) -> dict[str, Any]:
        return run_row(me.id, run_id, completed_at, **changes)

    month_ago = {"created_at": now - timedelta(days=30), "updated_at": now - timedelta(days=30)}
    doomed = [
        row("old", old),
        row("old_parent", old),
        row("old_child", old, parent_run_id="old_parent", root_run_id="old_parent"),
        row("old_grandchild", old, parent_run_id="old_child", root_run_id="old_parent"),
        row("old_settled", old, schedule_id=schedule["id"]),
    ]
    kept = [
        row("young", young),
        row("pending", None, **month_ago),
        row("running", None, status="running", lease_owner="w", **month_ago),
        row("waiting", None, status="waiting", **month_ago),
        # Cancelled, but its worker has not stopped the work yet: it still holds the lease.
        row("stopping", old, status="cancelled", lease_owner="w"),
        row("parent_of_running", old),
        row("running_child", None, status="running", parent_run_id="parent_of_running"),
        row("parent_of_young", old),
        row("young_child", young, parent_run_id="parent_of_young"),
        # Ended, but the scheduler has not settled it into its schedule yet.
        row("old_unsettled", old - timedelta(hours=1), schedule_id=schedule["id"], status="failed"),
    ]
    insert(store, schedules, [schedule])
    insert(store, runs, doomed + kept)
    insert(store, run_events, [e for r in doomed + kept for e in event_rows(r)])
    fired = [r for r in doomed + kept if r["schedule_id"]]
    insert(
        store,
        schedule_firings,
        [firing_row(r, settled=r["run_id"] == "old_settled") for r in fired],
    )

    # Batches of one: a parent becomes deletable only once its children are gone.
    found = pruner(store, log).prune(older_than=timedelta(days=1), batch_size=1, max_batches=100)

    assert found == len(doomed)
    with store.connect() as conn:
        left = set(
            conn.execute(sa.select(runs.c.run_id).where(runs.c.project_id == me.id)).scalars()
        )
        firings = conn.execute(
            sa.select(schedule_firings.c.run_id).where(schedule_firings.c.project_id == me.id)
        ).scalars()
        assert list(firings) == ["old_unsettled"]
    assert left == {r["run_id"] for r in kept}
    assert rows_of(store, me)["run_events"] == 3 * len(kept)


def test_a_pass_with_nothing_old_enough_deletes_nothing(
    store: sa.Engine, log: RedisEventLog, me: Project
) -> None:
    insert(store, runs, [run_row(me.id, "fresh", utcnow() - timedelta(minutes=1))])
    assert pruner(store, log).prune(older_than=timedelta(days=1), batch_size=10, max_batches=5) == 0
    assert rows_of(store, me)["runs"] == 1


# -- the periodic job and the settings -------------------------------------------------------


def test_the_sweeper_prunes_only_when_a_retention_is_set(
    own_url: str, redis_url: str, store: sa.Engine, me: Project
) -> None:
    insert(
        store, runs, [run_row(me.id, f"swept_{n}", utcnow() - timedelta(days=3)) for n in range(5)]
    )

    def sweeper_prunes(**retention: Any) -> int:
        settings = base_settings(database_url=own_url, redis_url=redis_url, **retention)
        wired = wire(settings, pool_size=1, auth_cache_seconds=0)
        try:
            return Sweeper(settings, Registry()).prune(wired)
        finally:
            wired.close()

    assert sweeper_prunes() == 0
    assert sweeper_prunes(retention_days=7) == 0
    assert sweeper_prunes(retention_days=2.5, retention_batch_size=2) == 5
    assert rows_of(store, me)["runs"] == 0


def test_the_stream_ttl_is_read_from_its_name_or_its_older_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RUNS_STREAM_TTL_SECONDS", raising=False)
    monkeypatch.setenv("RUNS_EVENT_STREAM_TTL_SECONDS", "600")
    assert Settings(_env_file=None).stream_ttl_seconds == 600
    monkeypatch.setenv("RUNS_STREAM_TTL_SECONDS", "900")
    assert Settings(_env_file=None).stream_ttl_seconds == 900
    assert Settings(_env_file=None, stream_ttl_seconds=120).stream_ttl_seconds == 120
    env_file = tmp_path / ".env"
    env_file.write_text("RUNS_RETENTION_DAYS=30\nRUNS_RETENTION_BATCH_SIZE=100\n")
    loaded = Settings(_env_file=env_file)
    assert (loaded.retention_days, loaded.retention_batch_size) == (30, 100)
    assert Settings(_env_file=None).retention_days is None
