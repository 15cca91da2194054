"""The Alembic migrations equal the table models, and go down and up again, on both backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from runs.domain.projects import Project
from runs.domain.runs import RunRef
from runs.persistence import event_archive, migrate, nodes, projects, records, transitions
from runs.persistence.engine import create_engine
from runs.persistence.tables import metadata
from runs.persistence.tables import runs as runs_table

MODEL_TABLES = {
    "projects",
    "api_tokens",
    "definitions",
    "runs",
    "run_events",
    "workflow_nodes",
    "schedules",
    "schedule_firings",
}


def schema_diff(database_url: str) -> list[Any]:
    """What autogenerate would still write to make the database equal the models."""
    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def table_names(database_url: str) -> set[str]:
    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def current_revision(database_url: str) -> str | None:
    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the real PostgreSQL, dropped afterwards.

    Built beside the shared session database (whose fixture skips when PostgreSQL is absent),
    so downgrading it disturbs no other test.
    """
    server = sa.make_url(postgres_url)
    name = f"runs_mig_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def fresh_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fresh.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest) -> str:
    fixture = "fresh_sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    return str(request.getfixturevalue(fixture))


def head_revision() -> str:
    heads = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    return heads[0]


def test_the_migrations_have_exactly_one_head() -> None:
    assert head_revision()


def test_a_migrated_database_equals_the_models(database_url: str) -> None:
    assert schema_diff(database_url) == []
    assert current_revision(database_url) == head_revision()


def test_the_models_and_migrations_create_the_same_tables(database_url: str) -> None:
    assert set(metadata.tables) == MODEL_TABLES
    assert table_names(database_url) == MODEL_TABLES | {"alembic_version"}


def test_an_empty_database_differs_from_the_models(fresh_sqlite_url: str) -> None:
    """The comparison can see a difference at all (so an empty diff above means something)."""
    create_engine(fresh_sqlite_url).dispose()
    added = {d[1].name for d in schema_diff(fresh_sqlite_url) if d[0] == "add_table"}
    assert added == MODEL_TABLES


def test_upgrade_then_downgrade_to_base_then_upgrade_again_works(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)
    assert schema_diff(fresh_url) == []

    migrate.downgrade(fresh_url, "base")
    assert table_names(fresh_url) <= {"alembic_version"}
    assert current_revision(fresh_url) is None

    migrate.upgrade(fresh_url)
    assert schema_diff(fresh_url) == []
    assert current_revision(fresh_url) == head_revision()


def test_upgrading_an_up_to_date_database_changes_nothing(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)
    migrate.upgrade(fresh_url)
    assert schema_diff(fresh_url) == []
    assert current_revision(fresh_url) == head_revision()


def test_scoping_run_ids_by_project_carries_existing_runs_events_and_nodes_over(
    fresh_url: str,
) -> None:
    """Revision 0004 re-keys runs, run_events and workflow_nodes by (project_id, run_id)."""
    migrate.upgrade(fresh_url, "0003")
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    project_id = str(uuid.uuid4())
    engine = create_engine(fresh_url, pool_size=1)
    try:
        with engine.begin() as conn:
            old = sa.MetaData()
            old.reflect(conn, only=["projects", "runs", "run_events", "workflow_nodes"])
            tables = old.tables
            conn.execute(
                tables["projects"].insert(),
                {"id": project_id, "slug": f"m-{project_id[:8]}", "name": "m", "created_at": now},
            )
            for run_id, kind in (("run_task", "task"), ("run_flow", "workflow")):
                conn.execute(
                    tables["runs"].insert(),
                    {
                        "run_id": run_id,
                        "project_id": project_id,
                        "kind": kind,
                        "status": "completed",
                        "owner_kind": "project",
                        "owner_id": project_id,
                        "root_run_id": run_id,
                        "target": f"{kind}:echo",
                        "artifacts": [],
                        "queue": "runs",
                        "config": {"kept": run_id},
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            conn.execute(
                tables["run_events"].insert(),
                [
                    {
                        "run_id": "run_task",
                        "event_id": i,
                        "event_type": "RUN_LOG_CAPTURED",
                        "payload": {"n": i},
                        "created_at": now,
                    }
                    for i in (1, 2, 3)
                ],
            )
            conn.execute(
                tables["workflow_nodes"].insert(),
                {
                    "run_id": "run_flow",
                    "node_id": "a",
                    "position": 0,
                    "status": "completed",
                    "attempt": 1,
                    "output": {"a": 1},
                    "updated_at": now,
                },
            )
        migrate.upgrade(fresh_url)
        assert schema_diff(fresh_url) == []
        task, flow = RunRef(project_id, "run_task"), RunRef(project_id, "run_flow")
        with engine.connect() as conn:
            carried = records.get_run(conn, task)
            assert carried is not None and carried.config == {"kept": "run_task"}
            events = event_archive.list_events(conn, task, after=0, limit=10)
            assert [(e.event_id, e.payload) for e in events] == [(i, {"n": i}) for i in (1, 2, 3)]
            assert nodes.get_nodes(conn, flow)["a"].output == {"a": 1}
        # The new key holds the same id in another project.
        other = Project(str(uuid.uuid4()), f"n-{project_id[:8]}", "n", now)
        with engine.begin() as conn:
            projects.insert_project(conn, other)
            conn.execute(
                runs_table.insert(),
                {
                    "run_id": "run_task",
                    "project_id": other.id,
                    "kind": "task",
                    "status": "pending",
                    "owner_kind": "project",
                    "owner_id": other.id,
                    "root_run_id": "run_task",
                    "target": "task:echo",
                    "artifacts": [],
                    "queue": "runs",
                    "created_at": now,
                    "updated_at": now,
                },
            )
        with engine.connect() as conn:
            assert (
                len(
                    event_archive.list_events(conn, RunRef(other.id, "run_task"), after=0, limit=10)
                )
                == 0
            )
            assert len(event_archive.list_events(conn, task, after=0, limit=10)) == 3
    finally:
        engine.dispose()


def test_statements_by_key_use_the_primary_key_on_a_table_never_analyzed(
    fresh_postgres_url: str,
) -> None:
    """A partial index whose condition a claim implied was preferred to the key while the
    table had no statistics yet (a new deployment), and every claim scanned the index."""
    migrate.upgrade(fresh_postgres_url)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    project = Project(str(uuid.uuid4()), "p", "p", now)
    engine = create_engine(fresh_postgres_url, pool_size=1)
    try:
        with engine.begin() as conn:
            projects.insert_project(conn, project)
            for i in range(300):
                run_id = f"run_{i}"
                conn.execute(
                    runs_table.insert(),
                    {
                        "run_id": run_id,
                        "project_id": project.id,
                        "kind": "task",
                        "status": "pending",
                        "owner_kind": "project",
                        "owner_id": project.id,
                        "root_run_id": run_id,
                        "parent_run_id": "run_0" if i % 2 else None,
                        "target": "task:echo",
                        "queue": "runs",
                        "artifacts": [],
                        "attempt": 0,
                        "created_at": now,
                        "updated_at": now,
                        "available_at": now,
                    },
                )
        key = {"b_project_id": project.id, "b_run_id": "run_7"}
        statements = {
            "claim": (transitions._CLAIM, {**key, "b_now": now, "b_worker": "w", "b_lease": now}),
            "finish": (
                transitions._FINISH_WITH_EVENTS,
                {
                    **key,
                    "b_attempt": 1,
                    **{f"b_{name}": None for name in transitions.FINISH_FIELDS},
                    "b_status": "completed",
                    "b_artifacts": [],
                    "b_updated_at": now,
                    "b_events": [],
                },
            ),
            "get": (
                runs_table.select().where(
                    event_archive.of_run(runs_table, RunRef(project.id, "run_7"))
                ),
                {},
            ),
        }
        with engine.connect() as conn:
            for name, (statement, params) in statements.items():
                compiled = statement.compile(dialect=conn.dialect)
                bound = compiled.construct_params(params)
                processors = compiled._bind_processors
                bound = {k: processors[k](v) if k in processors else v for k, v in bound.items()}
                plan = "\n".join(
                    row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", bound)
                )
                assert "pk_runs" in plan, f"{name}:\n{plan}"
    finally:
        engine.dispose()
