"""End-to-end throughput of `task:echo` runs through the HTTP API vs plain Celery no-op jobs.

Both run on this machine in the same invocation, each with one prefork worker of 2 processes
on the local Redis; runs use a fresh PostgreSQL database. Prints runs/s, jobs/s and their
ratio, plus the API's accept latency. Usage: python benchmarks/throughput.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def start_plain_worker(
    queue: str, counter: str, log: Path
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A prefork worker (2 processes) of plain Celery no-op jobs that count themselves in ``counter``."""
    env = {
        **os.environ,
        "BENCH_QUEUE": queue,
        "BENCH_COUNTER": counter,
        "BENCH_REDIS_URL": REDIS_URL,
    }
    argv = [sys.executable, "-m", "celery", "-A", "benchmarks.plain_celery", "worker"]
    argv += ["-P", "prefork", "-c", "2", "-Q", queue, "-l", "WARNING"]
    argv += ["--without-mingle", "--without-gossip"]
    return start(argv, env, log), env


def plain_celery(n: int, logdir: Path) -> float:
    queue = f"bench-plain-{uuid.uuid4().hex[:6]}"
    counter = f"bench:plain:{queue}"
    worker, env = start_plain_worker(queue, counter, logdir / "plain-worker.log")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        os.environ.update(env)
        from benchmarks.plain_celery import app

        app.conf.task_default_queue = queue
        app.send_task("noop", queue=queue)  # warm-up, waits for the worker below
        wait_for(lambda: client.get(counter) == b"1", 60, "plain worker")
        client.set(counter, 0)
        started = time.perf_counter()
        for _ in range(n):
            app.send_task("noop", queue=queue)
        wait_for(lambda: int(client.get(counter) or 0) >= n, 300, "plain jobs")
        return n / (time.perf_counter() - started)
    finally:
        stop(worker)
        client.delete(counter)


def runs_stack(n: int, concurrency: int, logdir: Path) -> tuple[float, list[float]]:
    from runs.access import AccessService
    from runs.embedded import free_port
    from runs.persistence import migrate
    from runs.persistence.engine import create_engine

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"runs_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    engine = create_engine(url)
    access = AccessService(engine)
    project = access.create_project("bench")
    _, token = access.create_token("bench")
    port = free_port(0)
    env = {
        **os.environ,
        "RUNS_DATABASE_URL": url,
        "RUNS_REDIS_URL": REDIS_URL,
        "RUNS_DEFAULT_QUEUE": f"bench-runs-{uuid.uuid4().hex[:6]}",
        "RUNS_LOG_LEVEL": "WARNING",
    }
    worker = start(
        [sys.executable, "-m", "runs.cli", "worker", "--concurrency", "2"],
        env,
        logdir / "runs-worker.log",
    )
    api = start(
        [sys.executable, "-m", "runs.cli", "api", "--port", str(port)], env, logdir / "runs-api.log"
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "kind": "task",
        "owner": {"kind": "project", "id": project.id},
        "request": {"target": "task:echo", "config": {"i": 0}},
    }

    def completed() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM runs WHERE status='completed'")
                ).scalar_one()
            )

    try:

        def api_up() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(api_up, 60, "API")
        with httpx.Client(base_url=base, headers=headers) as warm:
            wait_for(lambda: warm.post("/runs", json=body).status_code == 202, 60, "catalogue")
        wait_for(lambda: completed() >= 1, 60, "warm-up run")
        latencies: list[float] = []
        clients = [httpx.Client(base_url=base, headers=headers) for _ in range(concurrency)]

        def submit(i: int) -> None:
            t0 = time.perf_counter()
            response = clients[i % concurrency].post("/runs", json=body)
            latencies.append(time.perf_counter() - t0)
            assert response.status_code == 202, response.text

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(submit, range(n)))
        print(f"  accepted {n / (time.perf_counter() - started):.0f} runs/s", flush=True)
        wait_for(lambda: completed() >= n + 1, 600, "runs")
        rate = n / (time.perf_counter() - started)
        for c in clients:
            c.close()
        return rate, latencies
    finally:
        stop(api)
        stop(worker)
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logdir = ROOT / ".runs" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    plain, ours, lat = [], [], []
    for round_ in range(args.rounds):
        plain.append(plain_celery(args.runs, logdir))
        rate, latencies = runs_stack(args.runs, args.concurrency, logdir)
        ours.append(rate)
        lat.extend(latencies)
        print(
            f"round {round_ + 1}: plain Celery {plain[-1]:.0f} jobs/s, runs {rate:.0f} runs/s, "
            f"ratio {rate / plain[-1]:.2f}",
            flush=True,
        )
    lat.sort()
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    print(f"median plain Celery: {statistics.median(plain):.0f} jobs/s")
    print(
        f"median runs (HTTP create -> completed, PostgreSQL): {statistics.median(ours):.0f} runs/s"
    )
    print(f"median ratio runs/plain: {statistics.median(ours) / statistics.median(plain):.2f}")
    print(f"POST /runs latency with {args.concurrency} clients: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()
