"""Workflow engine overhead: a 20-step sequential workflow of no-op steps (time per step) and
two parallel 1-second steps end to end, next to a plain Celery chain of 20 no-op tasks.

Runs a prefork worker of 2 processes on the local Redis and a fresh PostgreSQL database.
Usage: python benchmarks/workflows.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import POSTGRES_URL, REDIS_URL, start, stop, wait_for  # noqa: E402
from benchmarks.throughput import start_plain_worker  # noqa: E402

# How often the chain's counter (in Redis) is polled: small beside a task (1 ms over 20 tasks
# is 0.05 ms a task).
POLL = 0.001


def plain_chain(rounds: int, logdir: Path) -> list[float]:
    queue = f"bench-chain-{uuid.uuid4().hex[:6]}"
    counter = f"bench:chain:{queue}"
    worker, env = start_plain_worker(queue, counter, logdir / "chain-worker.log", events=False)
    os.environ.update(env)
    from celery import chain

    from benchmarks.plain_celery import app, noop

    app.conf.task_default_queue = queue
    client = redis.Redis.from_url(REDIS_URL)
    timings = []
    try:
        noop.apply_async(queue=queue)
        wait_for(lambda: int(client.get(counter) or 0) >= 1, 60, "chain worker")
        for _ in range(rounds):
            client.set(counter, 0)
            started = time.perf_counter()
            chain(*[noop.si() for _ in range(20)]).apply_async(queue=queue)
            wait_for(lambda: int(client.get(counter) or 0) >= 20, 120, "chain", interval=POLL)
            timings.append((time.perf_counter() - started) / 20)
    finally:
        stop(worker)
        client.delete(counter)
    return timings


def workflows(rounds: int, logdir: Path) -> tuple[list[float], list[float]]:
    from runs.domain.runs import RunKind, RunRequest
    from runs.messaging.dispatch import CeleryDispatcher
    from runs.messaging.routing import Router
    from runs.persistence import migrate
    from runs.persistence.engine import create_engine
    from runs.services.access import AccessService
    from runs.services.catalog import DefinitionCatalog
    from runs.services.runs import RunService
    from runs.settings import Settings
    from runs.streams.event_log import RedisEventLog

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"runs_wbench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    queue = f"bench-wf-{uuid.uuid4().hex[:6]}"
    settings = Settings(_env_file=None, database_url=url, redis_url=REDIS_URL, default_queue=queue)
    env = {
        **os.environ,
        "RUNS_DATABASE_URL": url,
        "RUNS_REDIS_URL": REDIS_URL,
        "RUNS_DEFAULT_QUEUE": queue,
        "RUNS_DEFINITIONS": '["workers.examples", "benchmarks.definitions"]',
        "RUNS_LOG_LEVEL": "WARNING",
    }
    worker = start(
        [sys.executable, "-m", "runs.cli", "worker", "--concurrency", "2"],
        env,
        logdir / "wf-worker.log",
    )
    engine = create_engine(url)
    dispatcher = CeleryDispatcher.from_settings(settings)
    service = RunService(
        engine,
        dispatcher=dispatcher,
        events=RedisEventLog.from_url(REDIS_URL, ttl_seconds=3600),
        router=Router([], queue),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=65536,
    )
    project = AccessService(engine).create_project("bench")

    def run(workflow_id: str) -> float:
        created, _ = service.create(
            project,
            RunRequest(
                kind=RunKind.WORKFLOW,
                owner_kind="project",
                owner_id=project.id,
                target=f"workflow:{workflow_id}",
                workflow_id=workflow_id,
            ),
        )
        wait_for(lambda: service.get(project, created.run_id).status.is_terminal, 120, workflow_id)
        done = service.get(project, created.run_id)
        assert done.status.value == "completed" and done.completed_at is not None
        # Timed by the server's own clocks, accept to terminal record: polling the database
        # often enough to time it from here would load the machine it measures.
        return (done.completed_at - done.created_at).total_seconds()

    try:
        wait_for(
            lambda: (
                "workflow:bench/seq20"
                in {d.target for d in DefinitionCatalog(engine, cache_seconds=0).list()}
            ),
            60,
            "worker",
        )
        run("bench/seq20")  # warm-up
        per_step = [run("bench/seq20") / 20 for _ in range(rounds)]
        parallel = [run("bench/parallel-1s") for _ in range(rounds)]
        return per_step, parallel
    finally:
        stop(worker)
        dispatcher.close()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logdir = ROOT / ".runs" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    chain_step = statistics.median(plain_chain(args.rounds, logdir))
    per_step, parallel = workflows(args.rounds, logdir)
    step_ms = statistics.median(per_step) * 1000
    print(f"plain Celery chain of 20 no-op tasks: {chain_step * 1000:.1f} ms per task")
    print(
        f"workflow of 20 sequential no-op steps: {step_ms:.1f} ms per step "
        f"({step_ms / (chain_step * 1000):.1f}x the chain)"
    )
    print(f"two parallel 1-second steps, submit to completed: {statistics.median(parallel):.2f} s")


if __name__ == "__main__":
    main()
