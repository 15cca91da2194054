"""The yardsticks: plain Celery no-op jobs on the same Redis, no result backend; and the
issue's durable yardstick, Celery with one INSERT (before the send) and one UPDATE (in the
job) per job on PostgreSQL through raw psycopg."""

from __future__ import annotations

import os
import time

import psycopg
import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER = os.environ.get("BENCH_COUNTER", "bench:plain:done")
POSTGRES_DSN = os.environ.get("BENCH_PLAIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TABLE = "bench_plain_jobs"

app = Celery("plain", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench-plain"),
    worker_hijack_root_logger=False,
)
_client: redis.Redis | None = None
_db: psycopg.Connection | None = None


def _done() -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    _client.incr(COUNTER)  # how the driver sees "done" without a result backend


@app.task(name="noop")
def noop() -> None:
    _done()


@app.task(name="sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)
    _done()


@app.task(name="durable")
def durable(job_id: int) -> None:
    global _db
    if _db is None:  # one connection per pool process, opened after the fork
        _db = psycopg.connect(POSTGRES_DSN, autocommit=True)
    _db.execute(f"UPDATE {TABLE} SET status = 'done' WHERE id = %s AND status = 'queued'", [job_id])
    _done()


def prepare_table() -> psycopg.Connection:
    """An empty jobs table, and the producer's connection to it (autocommit)."""
    conn = psycopg.connect(POSTGRES_DSN, autocommit=True)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, status text)")
    conn.execute(f"TRUNCATE {TABLE}")
    return conn


def insert_job(conn: psycopg.Connection, job_id: int) -> None:
    conn.execute(f"INSERT INTO {TABLE} (id, status) VALUES (%s, 'queued')", [job_id])
