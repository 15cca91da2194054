"""The durable peer DBOS Transact (workflows on PostgreSQL), measured on the same machine.

One DBOS process (``python -m benchmarks.dbos_peer serve``) runs no-op workflows from a queue
with worker_concurrency 64 polled every 0.05 s, on a fresh system database; ``throughput``
enqueues workflows through ``DBOSClient`` as fast as one client can and counts them done, and
reports the CPU each part spent per workflow. Needs ``dbos`` (the ``bench`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_DBOS_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
QUEUE = "bench"
WORKER_CONCURRENCY = 64
POLLING_SECONDS = 0.05


def serve(url: str) -> None:
    """The DBOS process: the queue and the no-op workflow, until it is terminated."""
    from dbos import DBOS

    DBOS(config={"name": "runs-bench", "system_database_url": url, "log_level": "WARNING"})

    @DBOS.workflow(name="noop")
    def noop() -> None:
        return None

    DBOS.launch()
    DBOS.register_queue(
        QUEUE, worker_concurrency=WORKER_CONCURRENCY, polling_interval_sec=POLLING_SECONDS
    )
    print("dbos ready", flush=True)
    threading.Event().wait()


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"dbos_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    url = f"postgresql+psycopg://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}"
    url += f":{info.get('port', 5432)}/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def dbos_process(url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "benchmarks.dbos_peer", "serve", url]
    with log.open("wb") as handle:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"dbos ready" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"DBOS did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _done(url: str) -> int:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS' AND name = 'noop'"
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_done(url: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _done(url) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"DBOS did not finish {count} workflows in {timeout} s")
        time.sleep(0.05)


def available() -> bool:
    """Whether ``dbos`` is installed (the ``bench`` extra); says so when it is not."""
    if importlib.util.find_spec("dbos") is None:
        print("DBOS left out: pip install -e '.[bench]' installs it", flush=True)
        return False
    return True


def throughput(workflows: int, logdir: Path) -> tuple[float, dict[str, float]]:
    """Workflows per second from the first enqueue to the last done, and the CPU seconds per
    workflow of each part (the DBOS process, PostgreSQL, the enqueuing client: this script)."""
    from dbos import DBOSClient

    from benchmarks.throughput import cpu_seconds, postgres_pids

    with fresh_database() as url, dbos_process(url, logdir / "dbos.log") as process:
        client = DBOSClient(system_database_url=url)
        options = {"workflow_name": "noop", "queue_name": QUEUE}
        client.enqueue(options)  # type: ignore[arg-type]
        _wait_done(url, 1, 60)
        groups = {"dbos process": [process.pid], "postgres": postgres_pids()}
        before = {part: cpu_seconds(pids) for part, pids in groups.items()}
        mine = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for _ in range(workflows):
            client.enqueue(options)  # type: ignore[arg-type]
        _wait_done(url, workflows + 1, 600)
        rate = workflows / (time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {
            part: sum(cpu_seconds(pids).get(p, 0) - before[part].get(p, 0) for p in pids)
            / workflows
            for part, pids in groups.items()
        }
        spent = after.ru_utime + after.ru_stime - mine.ru_utime - mine.ru_stime
        cpu["client (this script)"] = spent / workflows
        client.destroy()
        return rate, cpu


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    else:
        print(throughput(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, ROOT / ".runs"))
