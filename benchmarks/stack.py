"""What the benchmark scripts share: starting processes, and the runs system on a fresh
PostgreSQL database (the API, one process unless told more, one prefork worker of 2 processes,
task events on)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    from runs.persistence import migrate

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class RunsSystem:
    base: str
    token: str
    project_id: str
    engine: sa.Engine
    worker: subprocess.Popen[bytes]
    api: subprocess.Popen[bytes]

    @property
    def task_body(self) -> dict[str, Any]:
        return {
            "kind": "task",
            "owner": {"kind": "project", "id": self.project_id},
            "request": {"target": "task:echo", "config": {"i": 0}},
        }

    def count(self, status: str | None = None) -> int:
        where = f" WHERE status = '{status}'" if status else ""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM runs{where}")).scalar_one())


@contextmanager
def runs_system(
    logdir: Path, *, concurrency: int = 2, api_workers: int = 1, **env: str
) -> Iterator[RunsSystem]:
    """The whole system, warmed up by one completed run; the API serves from ``api_workers``
    processes (`runs api --workers`)."""
    from runs.cli.embedded import free_port
    from runs.persistence.engine import create_engine
    from runs.services.access import AccessService

    with fresh_database("runs_bench") as url:
        engine = create_engine(url)
        access = AccessService(engine)
        project = access.create_project("bench")
        _, token = access.create_token("bench")
        port = free_port(0)
        environment = {
            **os.environ,
            "RUNS_DATABASE_URL": url,
            "RUNS_REDIS_URL": REDIS_URL,
            "RUNS_DEFAULT_QUEUE": f"bench-runs-{uuid.uuid4().hex[:6]}",
            "RUNS_LOG_LEVEL": "WARNING",
            **env,
        }
        worker = start(
            [sys.executable, "-m", "runs.cli", "worker", "--concurrency", str(concurrency)],
            environment,
            logdir / "runs-worker.log",
        )
        api_argv = [sys.executable, "-m", "runs.cli", "api", "--port", str(port)]
        api = start(
            [*api_argv, "--workers", str(api_workers)],
            environment,
            logdir / "runs-api.log",
        )
        system = RunsSystem(f"http://127.0.0.1:{port}", token, project.id, engine, worker, api)
        try:

            def api_up() -> bool:
                try:
                    return httpx.get(f"{system.base}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(api_up, 60, "API")
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=system.base, headers=headers) as warm:
                accepted = lambda: warm.post("/runs", json=system.task_body).status_code == 202  # noqa: E731
                wait_for(accepted, 60, "catalogue")
            wait_for(lambda: system.count("completed") >= 1, 60, "warm-up run")
            yield system
        finally:
            stop(api)
            stop(worker)
            engine.dispose()
            forget_project_keys(project.id)


def forget_project_keys(project_id: str) -> None:
    """Delete the Redis keys of a benchmark project's runs (they would stay a day)."""
    client = redis.Redis.from_url(REDIS_URL)
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"runs:{{{project_id}/*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)
    client.close()
