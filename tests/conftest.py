"""Shared fixtures: the real PostgreSQL and Redis, SQLite files, services and projects.

PostgreSQL and Redis are found from RUNS_TEST_POSTGRES_URL / RUNS_TEST_REDIS_URL (defaults:
the local services). Locally a test that needs one that is absent is skipped with the reason;
in CI (CI=true) it fails instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from runs.domain.definitions import Definition
from runs.domain.projects import Project
from runs.messaging.routing import Router
from runs.persistence import migrate
from runs.persistence.engine import create_engine
from runs.services.access import AccessService
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog
from runs.streams.following import EventFollower
from runs.testing import RecordingDispatcher
from tests.support import redis_hygiene
from tests.support.redis_cluster import PrivateRedisCluster, cluster_binaries
from tests.support.redis_hygiene import QUEUE, SESSION, SLOW_QUEUE, own

POSTGRES_URL = os.environ.get("RUNS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RUNS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Targets the test catalogue knows (the worker tests register the same through a real worker).
TEST_TARGETS = ["task:echo", "task:sleep", "task:fail"]


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI must have it)")
    pytest.skip(reason)


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated database on the real PostgreSQL for this test session."""
    admin_url = sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    name = f"runs_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc.orig}")
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield url
    note_projects(url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "runs.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    created = create_engine(database_url)
    with created.begin():
        pass
    DefinitionCatalog(created, cache_seconds=0).register(
        Definition(target=t, kind="task") for t in TEST_TARGETS
    )
    yield created
    created.dispose()


@pytest.fixture(scope="session")
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    created = create_engine(postgres_url)
    DefinitionCatalog(created, cache_seconds=0).register(
        Definition(target=t, kind="task") for t in TEST_TARGETS
    )
    yield created
    created.dispose()


# -- Redis ---------------------------------------------------------------------------------


PROJECT_IDS: set[str] = set()  # of the databases dropped before the session's end
# In CI, where no other session shares the Redis: the keys there were at the start, and those
# made during the session that are still there after cleaning (a test's, then).
_at_start: set[bytes] | None = None
_left: list[str] = []


def note_projects(url: str) -> None:
    """Before a database of the session is dropped: the event keys of its projects' runs go
    at the end of the session (redis_hygiene)."""
    reader = create_engine(url, pool_size=1)
    try:
        with reader.connect() as conn:
            PROJECT_IDS.update(conn.execute(sa.text("SELECT id FROM projects")).scalars())
    finally:
        reader.dispose()


def _test_redis() -> redis.Redis | None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        return None
    return client


def pytest_sessionstart(session: pytest.Session) -> None:
    global _at_start
    client = _test_redis() if IN_CI else None
    if client is not None:
        with client:
            _at_start = set(client.scan_iter(count=1000))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Once every worker, API and scheduler of the session has stopped: delete what the session
    left in the shared Redis (and in CI, note what else appeared meanwhile and is still there)."""
    client = _test_redis()
    if client is None:
        return
    with client:
        # Every SQLite database of the session is under its base temporary folder.
        basetemp = session.config._tmp_path_factory.getbasetemp()
        projects = PROJECT_IDS | redis_hygiene.sqlite_project_ids(basetemp)
        redis_hygiene.clean(client, SESSION, projects)
        if _at_start is not None:
            new = set(client.scan_iter(count=1000)) - _at_start
            _left.extend(sorted(k.decode(errors="replace") for k in new))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _left:
        terminalreporter.write_line(
            f"Redis at {REDIS_URL}: {len(_left)} key(s) made during this session are still "
            f"there; clean them up in the test that makes them: {', '.join(_left[:5])}",
            yellow=True,
        )


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


# -- RabbitMQ (the other broker the worker tests run on) -----------------------------------

AMQP_URL = os.environ.get("RUNS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = ["redis", "amqp"]


@pytest.fixture(scope="session")
def amqp_url() -> str:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:  # kombu raises the transport's own errors
        unavailable(f"RabbitMQ is not reachable at {AMQP_URL}: {exc}")
    return AMQP_URL


def delete_queues(amqp_url: str, *queues: str) -> None:
    """Remove a test's queues from RabbitMQ (they are durable: they would outlive it)."""
    from kombu import Connection

    with Connection(amqp_url, connect_timeout=2) as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_delete(queue)


@pytest.fixture(scope="session")
def event_log(redis_url: str) -> Iterator[RedisEventLog]:
    log = RedisEventLog.from_url(redis_url, ttl_seconds=3600)
    yield log
    log.client.close()


# -- a Redis Cluster (the event log on one) -------------------------------------------------


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    """Three primaries of this session alone, on free loopback ports (tests/support/redis_cluster)."""
    binaries = cluster_binaries()
    if isinstance(binaries, str):
        unavailable(f"no Redis Cluster can be started: {binaries}")
    cluster = PrivateRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@dataclass(frozen=True)
class EventRedis:
    """Where a test's run events live: the shared Redis, or the session's Redis Cluster."""

    url: str
    cluster: bool
    log: RedisEventLog

    def follower(self, **options: Any) -> EventFollower:
        return EventFollower.from_url(self.url, cluster=self.cluster, **options)


@pytest.fixture(scope="session", params=["redis", "redis-cluster"])
def event_redis(request: pytest.FixtureRequest) -> Iterator[EventRedis]:
    """A test taking this, or a module whose ``event_log`` is ``event_redis.log``, runs on a
    single Redis and on a Redis Cluster."""
    if request.param == "redis":
        url, cluster = str(request.getfixturevalue("redis_url")), False
    else:
        url, cluster = request.getfixturevalue("redis_cluster").url, True
    log = RedisEventLog.from_url(url, ttl_seconds=3600, cluster=cluster)
    yield EventRedis(url, cluster, log)
    log.client.close()


# -- services ------------------------------------------------------------------------------


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher(sent=[])


@pytest.fixture
def service(
    engine: sa.Engine, event_log: RedisEventLog, dispatcher: RecordingDispatcher
) -> RunService:
    return RunService(
        engine,
        dispatcher=dispatcher,
        events=event_log,
        router=Router([("task:sleep", SLOW_QUEUE)], QUEUE),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
    )


@pytest.fixture
def attempts(
    engine: sa.Engine, event_log: RedisEventLog, dispatcher: RecordingDispatcher
) -> AttemptService:
    return AttemptService(engine, dispatcher=dispatcher, events=event_log)


@pytest.fixture
def access(engine: sa.Engine) -> AccessService:
    return AccessService(engine)


@pytest.fixture
def project(access: AccessService) -> Project:
    """A new project per test: projects are walls, so tests never see each other's runs."""
    return access.create_project(f"p-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def other_project(access: AccessService) -> Project:
    return access.create_project(f"o-{uuid.uuid4().hex[:12]}")


def base_settings(**overrides: Any) -> Settings:
    """Settings for tests: never read from the developer's .env file; jobs go to the
    session's own queue unless ``default_queue`` says otherwise."""
    return Settings(_env_file=None, **{"default_queue": QUEUE, **overrides})


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# -- a real Celery worker ------------------------------------------------------------------

WORKER_TARGETS = [
    *TEST_TARGETS,
    "task:test/async",
    "task:test/observable",
    "task:test/typed",
    "task:test/bad-output",
    "task:test/crash",
    "task:test/ticker",
]


@dataclass
class WorkerPool:
    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    settings: Settings,
    log_path: Path,
    *,
    concurrency: int = 2,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``celery worker`` as a subprocess, configured through RUNS_* like a deployment."""
    env = {
        **os.environ,
        "RUNS_DATABASE_URL": settings.database_url,
        "RUNS_REDIS_URL": settings.redis_url,
        "RUNS_DEFAULT_QUEUE": settings.default_queue,
        "RUNS_DEFINITIONS": json.dumps(settings.definitions),
        **({"RUNS_BROKER_URL": settings.broker_url} if settings.broker_url else {}),
        **(extra_env or {}),
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "-Q",
                settings.default_queue,
                "-c",
                str(concurrency),
                "-P",
                "prefork",
                "-l",
                "INFO",
                "-E",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"{own('test')}@%h",
            ],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_until_consuming(
    settings: Settings, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log_path.read_text(errors='replace')}")
        if " ready." in log_path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker not ready in 60 s:\n{log_path.read_text(errors='replace')}")


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def worker_pool(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerPool]:
    """One real prefork worker (2 processes) on PostgreSQL and Redis, on a queue of its own."""
    yield from _worker_pool(postgres_url, redis_url, None, tmp_path_factory)


@pytest.fixture(scope="session")
def amqp_worker_pool(
    postgres_url: str, redis_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerPool]:
    """``worker_pool`` with RabbitMQ as the broker (events stay on Redis)."""
    yield from _worker_pool(postgres_url, redis_url, amqp_url, tmp_path_factory)


def _worker_pool(
    postgres_url: str,
    redis_url: str,
    broker_url: str | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerPool]:
    settings = base_settings(
        database_url=postgres_url,
        redis_url=redis_url,
        broker_url=broker_url,
        default_queue=own("runs-test"),
        definitions=["workers.examples", "tests.support.definitions"],
    )
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(settings, log_path)
    try:
        wait_until_consuming(settings, process, log_path)
        yield WorkerPool(settings=settings, process=process, log_path=log_path)
    finally:
        stop_worker(process)
        if broker_url is not None:
            delete_queues(broker_url, settings.default_queue)


# -- a worker pool tuned for durability tests ----------------------------------------------

# Short leases, sweeps, grace periods and backoffs, so that faults resolve in seconds.
DURABLE_ENV = {
    "RUNS_WORKER_LEASE_SECONDS": "1.5",
    "RUNS_SWEEP_INTERVAL_SECONDS": "0.3",
    "RUNS_PENDING_REDISPATCH_SECONDS": "2",
    "RUNS_CANCEL_GRACE_SECONDS": "1",
    "RUNS_RETRY_BACKOFF_SECONDS": "0.1",
    "RUNS_RETRY_BACKOFF_MAX_SECONDS": "0.4",
    "RUNS_MAX_OUTPUT_BYTES": "4096",
    "RUNS_MAX_LOG_BYTES": "2048",
    "RUNS_FINISH_RETRY_SECONDS": "20",
    "RUNS_TEST_VISIBLE": "seen",
    "RUNS_TEST_HIDDEN": "secret",
}


def durable_settings(postgres_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": postgres_url,
        "redis_url": redis_url,
        "default_queue": own("runs-durable"),
        "definitions": [
            "workers.examples",
            "tests.support.definitions",
            "tests.support.durability_definitions",
        ],
    }
    values.update(overrides)
    return base_settings(**values)


@pytest.fixture(scope="session")
def durable_pool(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerPool]:
    """A real prefork worker (2 processes) with the short timings of DURABLE_ENV."""
    settings = durable_settings(postgres_url, redis_url)
    log_path = tmp_path_factory.mktemp("durable") / "worker.log"
    process = start_worker(settings, log_path, extra_env=DURABLE_ENV)
    try:
        wait_until_consuming(settings, process, log_path)
        yield WorkerPool(settings=settings, process=process, log_path=log_path)
    finally:
        stop_worker(process)
