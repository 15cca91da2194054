"""The worker's task events (what Flower shows), sent in batches on a short timer.

Celery buffers a worker's task events and sends what it holds after every turn of the main
process's event loop: under load, about one publish a job, and each publish blocks the loop
that also hands jobs to the pool processes. This consumer sends them at most every
``RUNS_WORKER_EVENT_FLUSH_SECONDS`` (0.1) instead (Flower reads the batch as it reads Celery's
own), and sends what it holds before the worker stops. A full buffer (Celery's limit) is still
sent at once.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.request import Request

# Where Celery's ``worker_consumer`` setting finds the consumer below, and the app setting
# that holds the interval.
CONSUMER = "workers.task_events:BatchedEventsConsumer"
INTERVAL_SETTING = "runs_event_flush_seconds"


class BatchedEventsConsumer(Consumer):  # type: ignore[misc]
    _flush_at: float | None = None  # when the pending batch is due, if one is

    def on_send_event_buffered(self) -> None:
        interval = float(self.app.conf.get(INTERVAL_SETTING) or 0)
        if not self.hub or not interval:
            super().on_send_event_buffered()
            return
        now = time.monotonic()
        # A timer lost with a connection that restarted is not waited for past its time.
        if self._flush_at is None or now > self._flush_at + interval:
            self._flush_at = now + interval
            self.hub.call_later(interval, self._flush_batch)

    def _flush_batch(self) -> None:
        self._flush_at = None
        self._flush_events()

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # the broker is gone: nothing can be sent
            self._flush_events()
        super().shutdown()


class JobRequest(Request):  # type: ignore[misc]
    """A job as the worker's main process handles it, with the task events Flower needs: the
    job received (its name) and how it ended. No ``task-started``: the run's record says when
    it started, and the event would cost the main process a publish per run."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type != "task-started":
            super().send_event(type, **fields)
