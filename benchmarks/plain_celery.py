"""The yardstick: plain Celery no-op jobs on the same Redis, no result backend."""

from __future__ import annotations

import os

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER = os.environ.get("BENCH_COUNTER", "bench:plain:done")

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


@app.task(name="noop")
def noop() -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    _client.incr(COUNTER)  # how the driver sees "done" without a result backend
