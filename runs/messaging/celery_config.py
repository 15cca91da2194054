"""Celery configuration shared by the dispatcher (producer) and the worker pools (consumers)."""

from __future__ import annotations

from typing import Any

from runs.messaging.broker import REDIS_TRANSPORT
from runs.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.effective_broker_url
    return {
        "broker_url": broker,
        # On Redis, kombu's transport with a publishing client that is kept (runs/messaging/broker.py).
        "broker_transport": REDIS_TRANSPORT if broker.startswith("redis://") else None,
        "broker_connection_retry_on_startup": True,
        # A Redis broker hands an unacknowledged message to another worker once this expires;
        # it must exceed the longest run, or a slow run would be delivered twice. Settings
        # refuse a value not above RUNS_MAX_TIMEOUT_SECONDS (every attempt's cap) plus the stop
        # grace. A redelivery is harmless anyway (the claim is conditional), and a worker that
        # died is noticed by its lapsed lease long before this, by the sweeper.
        "broker_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            "socket_connect_timeout": 5,
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        # The run record is the result: no Celery result backend.
        "task_ignore_result": True,
        "result_backend": None,
        # Durability: acknowledge after the job ran (a worker dying mid-job leaves the message
        # unacknowledged), requeue at once when a pool process dies (including one the stop
        # guard killed), and take one message at a time so a crash strands at most one.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Fail fast when the broker is down: the run stays pending and is not lost.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_default_queue": settings.default_queue,
        # Flower: every target is a task type; workers send a job's received event and its
        # outcome, in batches (workers/flower_events.py). No "task-sent" events from the API and
        # no "task-started" from workers: each would cost a publish per run.
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
    }
