"""The durable peer: Procrastinate (jobs on PostgreSQL), measured on the same machine.

A worker of concurrency 2 runs no-op jobs from a fresh database. ``throughput`` defers jobs
as fast as one client can and counts them done; ``latency`` offers jobs at a fixed rate and
reads, from Procrastinate's own event table, how long each waited from deferred to started.
Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from procrastinate import App, PsycopgConnector, SyncPsycopgConnector

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_PROCRASTINATE_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
DSN = os.environ.get("BENCH_PROCRASTINATE_DSN", ADMIN_DSN)

app = App(connector=PsycopgConnector(conninfo=DSN))


@app.task(name="noop")
def noop() -> None:
    return None


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"procrastinate_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
    try:
        with app.replace_connector(SyncPsycopgConnector(conninfo=dsn)) as sync_app:
            sync_app.open()
            sync_app.schema_manager.apply_schema()
            sync_app.close()
        yield dsn
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def worker(dsn: str, log: Path) -> Iterator[None]:
    env = {**os.environ, "BENCH_PROCRASTINATE_DSN": dsn, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "procrastinate", "--app=benchmarks.procrastinate_peer.app"]
    argv += ["worker", "--concurrency=2"]
    with log.open("wb") as handle:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=handle)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _done(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_done(dsn: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _done(dsn) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"procrastinate did not finish {count} jobs in {timeout} s")
        time.sleep(0.05)


def throughput(jobs: int, logdir: Path) -> float:
    """Jobs per second, from the first defer to the last job done."""
    with (
        fresh_database() as dsn,
        worker(dsn, logdir / "procrastinate-worker.log"),
        app.replace_connector(SyncPsycopgConnector(conninfo=dsn)) as sync_app,
    ):
        sync_app.open()
        task = sync_app.tasks["noop"]
        task.defer()
        _wait_done(dsn, 1, 60)  # the worker is up
        started = time.perf_counter()
        for _ in range(jobs):
            task.defer()
        _wait_done(dsn, jobs + 1, 600)
        sync_app.close()
        return jobs / (time.perf_counter() - started)


def latency(rate: float, seconds: float, logdir: Path) -> tuple[float, float]:
    """p50 and p99 (ms) from deferred to started, with ``rate`` jobs offered per second."""
    with fresh_database() as dsn, worker(dsn, logdir / "procrastinate-worker.log"):
        with app.replace_connector(SyncPsycopgConnector(conninfo=dsn)) as sync_app:
            sync_app.open()
            task = sync_app.tasks["noop"]
            task.defer()
            _wait_done(dsn, 1, 60)
            count = int(rate * seconds)
            started = time.perf_counter()
            for i in range(count):
                time.sleep(max(0.0, started + i / rate - time.perf_counter()))
                task.defer()
            _wait_done(dsn, count + 1, 600)
            sync_app.close()
        with psycopg.connect(dsn) as conn:
            waits = [
                float(row[0])
                for row in conn.execute(
                    "SELECT extract(epoch FROM s.at - d.at) * 1000 FROM procrastinate_events d "
                    "JOIN procrastinate_events s ON s.job_id = d.job_id AND s.type = 'started' "
                    "WHERE d.type = 'deferred' ORDER BY d.job_id OFFSET 1"
                )
            ]
    return statistics.median(waits), percentile(waits, 0.99)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]
