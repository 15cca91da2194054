"""Graceful drain: SIGTERM to a worker lets its running attempts end for
RUNS_WORKER_DRAIN_SECONDS, then hands the rest back at once (pending, the attempt not counted),
so a rolling restart loses, fails and repeats nothing. Real worker processes on PostgreSQL;
on the Redis broker and on RabbitMQ."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from runs.domain.projects import Project
from runs.domain.runs import Run, RunKind, RunRequest, RunStatus
from runs.persistence.tables import runs as runs_table
from runs.services.access import AccessService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog
from tests.conftest import (
    BROKERS,
    DURABLE_ENV,
    delete_queues,
    durable_settings,
    start_worker,
    stop_worker,
    wait_until_consuming,
)
from tests.support.durable_support import Live, live_services

pytestmark = pytest.mark.worker

WORK = "task:durable/work"
# A lease far longer than the test: a run that comes back quickly did not wait for it.
DRAIN_ENV = {**DURABLE_ENV, "RUNS_WORKER_DRAIN_SECONDS": "0.5", "RUNS_WORKER_LEASE_SECONDS": "60"}


class Pool:
    """Worker processes of one test on one queue."""

    def __init__(self, settings: Settings, directory: Path, env: dict[str, str]) -> None:
        self.settings, self.directory, self.env = settings, directory, env
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        log_path = self.directory / f"worker-{len(self.started) + 1}.log"
        process = start_worker(self.settings, log_path, concurrency=concurrency, extra_env=self.env)
        self.started.append((process, log_path))
        wait_until_consuming(self.settings, process, log_path)
        return process

    def terminate(self, process: subprocess.Popen[bytes], timeout: float = 30) -> float:
        """SIGTERM, as a deploy sends it; seconds until the worker exited (with code 0)."""
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=timeout) == 0, self.logs()
        return time.monotonic() - began

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-5000:]}" for _, p in self.started
        )

    def stop_all(self) -> None:
        for process, _ in self.started:
            stop_worker(process)
        if not self.settings.redis_broker:
            delete_queues(self.settings.effective_broker_url, self.settings.default_queue)


@pytest.fixture(params=BROKERS)
def pool(
    request: pytest.FixtureRequest, postgres_url: str, redis_url: str, tmp_path: Path
) -> Iterator[Pool]:
    broker = None if request.param == "redis" else request.getfixturevalue("amqp_url")
    made = Pool(durable_settings(postgres_url, redis_url, broker_url=broker), tmp_path, DRAIN_ENV)
    try:
        yield made
    finally:
        made.stop_all()


@pytest.fixture
def live(pool: Pool, pg_engine: sa.Engine, event_log: RedisEventLog) -> Iterator[Live]:
    with live_services(pool.settings, pg_engine, event_log) as services:
        yield services


@pytest.fixture
def counters(redis_url: str) -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url(redis_url)
    prefix = f"runs-test:drain:{uuid.uuid4().hex}"
    yield client, prefix
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"drain-{uuid.uuid4().hex[:12]}")


def submit(live: Live, project: Project, seconds: float, prefix: str, **options: Any) -> Run:
    run_id = f"run_{uuid.uuid4()}"
    config = {
        "seconds": seconds,
        "counter": f"{prefix}:started:{run_id}",
        "finished": f"{prefix}:finished:{run_id}",
    }
    run, _ = live.runs.create(
        project,
        RunRequest(
            kind=RunKind.TASK,
            owner_kind="project",
            owner_id=project.id,
            target=WORK,
            config=config,
            public_id=run_id,
            **options,
        ),
    )
    return run


def wait_holding(
    engine: sa.Engine, project: Project, runs: list[Run], worker: subprocess.Popen[bytes]
) -> None:
    """Wait until one of ``runs`` is running in a pool process of ``worker``."""
    query = sa.select(runs_table.c.lease_owner).where(
        runs_table.c.project_id == project.id,
        runs_table.c.run_id.in_([r.run_id for r in runs]),
        runs_table.c.status == RunStatus.RUNNING.value,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            owners = [o for o in conn.execute(query).scalars() if o]
        for owner in owners:
            pid = int(owner.split(":")[1])  # host:pid:claim
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if int(stat.rsplit(") ", 1)[1].split()[1]) == worker.pid:
                    return
        time.sleep(0.05)
    raise AssertionError(f"no long run reached worker {worker.pid}")


def count(client: redis.Redis, key: str) -> int:
    return int(client.get(key) or 0)


def test_attempts_that_end_within_the_drain_time_finish_on_the_stopping_worker(
    pool: Pool, live: Live, project: Project, counters: tuple[redis.Redis, str]
) -> None:
    pool.env = {**DRAIN_ENV, "RUNS_WORKER_DRAIN_SECONDS": "20"}
    worker = pool.start()
    client, prefix = counters
    runs = [submit(live, project, 1.5, prefix) for _ in range(2)]
    for run in runs:
        live.wait_running(project, run.run_id, timeout=20)
    took = pool.terminate(worker)
    assert took < 10, pool.logs()
    for run in runs:
        done = live.runs.get(project, run.run_id)
        assert done.status is RunStatus.COMPLETED, pool.logs()
        assert done.output == {"pid": done.output["pid"], "attempt": 1}
        assert count(client, f"{prefix}:started:{run.run_id}") == 1


def test_attempts_still_running_after_the_drain_time_are_handed_back_uncounted(
    pool: Pool, live: Live, project: Project, counters: tuple[redis.Redis, str]
) -> None:
    worker = pool.start()
    client, prefix = counters
    # No retry left: a counted attempt, or a reclaim, would fail the runs.
    runs = [submit(live, project, 6, prefix, backoff_limit=0) for _ in range(2)]
    for run in runs:
        live.wait_running(project, run.run_id, timeout=20)
    took = pool.terminate(worker)
    assert took < 5, f"drain 0.5 s, cooperative stop: {took:.1f} s\n{pool.logs()}"
    for run in runs:
        back = live.runs.get(project, run.run_id)
        assert back.status is RunStatus.PENDING, pool.logs()
        assert back.attempt == 0 and back.attempts == ()
        steps = [e.payload for e in live.runs.events(project, run.run_id, after=0, limit=50).items]
        assert steps[-1]["status"] == "handed_back", steps
    pool.start()
    for run in runs:
        done = live.wait_terminal(project, run.run_id, timeout=30)
        assert done.status is RunStatus.COMPLETED, pool.logs()
        assert done.attempt == 1 and done.attempts[-1].attempt == 1
        assert len(done.attempts) == 1  # the handed-back attempt left no record
        assert count(client, f"{prefix}:started:{run.run_id}") == 2
        assert count(client, f"{prefix}:finished:{run.run_id}") == 1
        types = live.event_types(project, run.run_id)
        assert types.count("RUN_STARTED") == 1 and types[-1] == "RUN_FINISHED"


def test_a_rolling_restart_of_both_workers_with_200_runs_in_flight_loses_fails_and_repeats_nothing(
    pool: Pool,
    live: Live,
    project: Project,
    counters: tuple[redis.Redis, str],
    pg_engine: sa.Engine,
) -> None:
    client, prefix = counters
    first, second = pool.start(), pool.start()
    # Most runs end within the drain time; every twentieth outlasts it and is handed back.
    runs = [
        submit(live, project, 2.0 if i % 20 == 0 else 0.1, prefix, backoff_limit=0)
        for i in range(200)
    ]
    long_runs = runs[::20]
    for worker in (first, second):
        # Restart each worker while it runs a long one, which then has to be handed back.
        wait_holding(pg_engine, project, long_runs, worker)
        pool.terminate(worker)
        pool.start()
    deadline = time.monotonic() + 120
    while True:
        ended = {r.run_id: live.runs.get(project, r.run_id) for r in runs}
        if all(r.status.is_terminal for r in ended.values()):
            break
        assert time.monotonic() < deadline, pool.logs()
        time.sleep(0.5)
    statuses = {r.status for r in ended.values()}
    started = [count(client, f"{prefix}:started:{r.run_id}") for r in runs]
    finished = [count(client, f"{prefix}:finished:{r.run_id}") for r in runs]
    handed_back = sum(
        "handed_back" in str(live.runs.events(project, r.run_id, after=0, limit=50).items)
        for r in runs
    )
    print(
        f"DRAIN rolling restart: runs={len(runs)} statuses={statuses} "
        f"handed_back={handed_back} started_twice={sum(s > 1 for s in started)}"
    )
    assert statuses == {RunStatus.COMPLETED}, pool.logs()
    assert handed_back > 0
    assert finished == [1] * len(runs), "a run executed to its end twice"
    assert all(r.attempt == 1 for r in ended.values())


def test_a_workflow_step_still_running_after_the_drain_time_is_handed_back_uncounted(
    pool: Pool, live: Live, project: Project, counters: tuple[redis.Redis, str]
) -> None:
    client, prefix = counters
    worker = pool.start()
    started, finished = f"{prefix}:started:step", f"{prefix}:finished:step"
    run, _ = live.runs.create(
        project,
        RunRequest(
            kind=RunKind.WORKFLOW,
            owner_kind="project",
            owner_id=project.id,
            target="workflow:durable/steady",
            workflow_id="durable/steady",
            input={"seconds": 3, "counter": started, "finished": finished},
        ),
    )
    deadline = time.monotonic() + 20
    while count(client, started) < 1:
        assert time.monotonic() < deadline, pool.logs()
        time.sleep(0.05)
    pool.terminate(worker)
    pool.start()
    done = live.wait_terminal(project, run.run_id, timeout=30)
    assert done.status is RunStatus.COMPLETED, f"{done.error}\n{pool.logs()}"
    assert count(client, started) == 2 and count(client, finished) == 1
    steps = [
        (e.payload["stepName"], e.payload["status"], e.payload.get("attempt"))
        for e in live.runs.events(project, run.run_id, after=0, limit=100).items
        if e.event_type == "STEP_FINISHED"
    ]
    assert steps[0] == ("work", "handed_back", 1), steps
    assert ("work", "completed", 1) in steps
