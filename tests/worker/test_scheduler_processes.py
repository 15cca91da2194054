"""Real ``runs scheduler`` processes: three at once create exactly one run per occurrence with
no gaps (PostgreSQL and SQLite), and one SIGKILLed in the middle of a firing transaction
neither loses nor doubles an occurrence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.domain.projects import Project
from runs.persistence.tables import runs as runs_table
from runs.persistence.tables import schedule_firings
from runs.persistence.tables import schedules as schedules_table
from runs.scheduling.catalogue import ScheduleService
from runs.services.runs import RunService
from tests.support.redis_hygiene import own

pytestmark = pytest.mark.worker


def start_scheduler(
    database_url: str, redis_url: str, log_path: Path, **settings: str
) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNS_")},
        "RUNS_DATABASE_URL": database_url,
        "RUNS_REDIS_URL": redis_url,
        # Jobs go to a queue nothing consumes: the runs stay pending, which is all this needs.
        "RUNS_DEFAULT_QUEUE": own("scheduler-test"),
        "RUNS_SCHEDULER_POLL_SECONDS": "0.2",
        **{f"RUNS_{k.upper()}": v for k, v in settings.items()},
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "runs.cli", "scheduler"],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=20)


@pytest.fixture
def clean(engine: sa.Engine) -> Iterator[None]:
    """A scheduler fires every project's due schedules: start and end with none, and leave no
    pending run behind for a worker's sweeper (it sweeps the whole database)."""

    def wipe() -> None:
        with engine.begin() as conn:
            conn.execute(schedule_firings.delete())
            conn.execute(schedules_table.delete())
            conn.execute(runs_table.delete().where(runs_table.c.schedule_id.is_not(None)))

    wipe()
    yield
    wipe()


def firings(engine: sa.Engine, schedule_id: str) -> list[tuple[datetime, str]]:
    query = (
        sa.select(schedule_firings.c.scheduled_for, schedule_firings.c.run_id)
        .where(schedule_firings.c.schedule_id == schedule_id)
        .order_by(schedule_firings.c.scheduled_for)
    )
    with engine.connect() as conn:
        return [(row[0], row[1]) for row in conn.execute(query)]


def run_ids(engine: sa.Engine, project: Project, schedule_id: str) -> list[str]:
    query = sa.select(runs_table.c.run_id).where(
        runs_table.c.project_id == project.id, runs_table.c.schedule_id == schedule_id
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def test_three_schedulers_create_exactly_one_run_per_occurrence_without_gaps(
    engine: sa.Engine,
    database_url: str,
    redis_url: str,
    service: RunService,
    project: Project,
    tmp_path: Path,
    clean: None,
) -> None:
    schedules = ScheduleService(engine, runs=service)
    made = [
        schedules.create(
            project,
            {
                "name": f"every-second-{i}",
                "target": {"kind": "task", "id": "echo"},
                "interval_seconds": 1,
            },
        )
        for i in range(20)
    ]
    processes = [
        start_scheduler(database_url, redis_url, tmp_path / f"scheduler-{n}.log") for n in range(3)
    ]
    try:
        time.sleep(8)
    finally:
        codes = [stop(p) for p in processes]
    logs = "\n".join(p.read_text() for p in tmp_path.glob("scheduler-*.log"))
    assert codes == [0, 0, 0], logs
    for schedule in made:
        fired = firings(engine, schedule.id)
        times = [at for at, _ in fired]
        assert len(times) >= 4, logs
        assert times[0] == schedule.next_run_at
        assert [(b - a) for a, b in pairwise(times)] == [timedelta(seconds=1)] * (len(times) - 1)
        assert sorted(run_ids(engine, project, schedule.id)) == sorted(r for _, r in fired)


def _pg_in_firing_transaction(engine: sa.Engine) -> bool:
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND xact_start IS NOT NULL AND pid <> pg_backend_pid() "
        "AND query ILIKE '%INSERT INTO%'"
    )
    with engine.connect() as conn:
        return bool(conn.execute(query).scalar())


def _due_schedules(engine: sa.Engine, project: Project, count: int) -> list[dict[str, Any]]:
    """``count`` hourly schedules whose first occurrence is due now, written in one go."""
    now = utcnow().replace(microsecond=0)
    rows = [
        {
            "id": f"sched_{uuid.uuid4()}",
            "project_id": project.id,
            "name": f"due-{i}",
            "target": "task:echo",
            "status": "active",
            "timezone": "UTC",
            "interval_seconds": 3600,
            "concurrency_policy": "Allow",
            "catchup": "latest",
            "next_run_at": now - timedelta(seconds=1),
            "run_count": 0,
            "skipped_count": 0,
            "definition_source": "manual",
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(schedules_table.insert(), rows)
    return rows


def test_a_scheduler_killed_mid_fire_neither_loses_nor_doubles_an_occurrence(
    engine: sa.Engine,
    database_url: str,
    redis_url: str,
    project: Project,
    tmp_path: Path,
    clean: None,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL shows another connection's open transaction; SQLite does not")
    pg_engine, postgres_url, pg_project = engine, database_url, project
    due = _due_schedules(pg_engine, pg_project, 3000)
    log = tmp_path / "killed.log"
    # One transaction for all of them: long enough to be caught in the middle.
    victim = start_scheduler(postgres_url, redis_url, log, scheduler_batch_size="3000")
    deadline = time.monotonic() + 60
    while not _pg_in_firing_transaction(pg_engine):
        assert victim.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schedule_firings)).scalar() == 0
    survivor = start_scheduler(postgres_url, redis_url, tmp_path / "survivor.log")
    try:
        deadline = time.monotonic() + 90
        while True:
            with pg_engine.connect() as conn:
                fired = conn.execute(
                    sa.select(sa.func.count()).select_from(schedule_firings)
                ).scalar()
            if fired == len(due):
                break
            assert time.monotonic() < deadline, (fired, (tmp_path / "survivor.log").read_text())
            time.sleep(0.5)
    finally:
        assert stop(survivor) == 0
    query = (
        sa.select(runs_table.c.schedule_id, sa.func.count())
        .where(runs_table.c.project_id == pg_project.id)
        .group_by(runs_table.c.schedule_id)
    )
    with pg_engine.connect() as conn:
        per_schedule = dict(conn.execute(query).all())
    assert per_schedule == {row["id"]: 1 for row in due}
