"""The worker's task events (what Flower shows), sent in batches on a short timer.

Celery buffers a worker's task events and sends what it holds after every turn of the main
process's event loop: under load, about one publish a job, and each publish blocks the loop
that also hands jobs to the pool processes. This consumer sends them at most every
``RUNS_WORKER_EVENT_FLUSH_SECONDS`` (0.1) instead (Flower reads the batch as it reads Celery's
own), and sends what it holds before the worker stops. A full buffer (Celery's limit) is still
sent at once.

A job always returns (its run's outcome is in the run record, not in Celery's state), so the
event Celery would send for its end, ``task-succeeded``, is replaced by the one that tells the
truth about the run (``outcome_event``): its result says how the attempt ended.
"""

from __future__ import annotations

import ast
import contextlib
import time
from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer
from celery.worker.request import Request

from runs.messaging.dispatch import GROUP_ARGUMENT
from workers.execution.results import (
    CANCELLED,
    DEFERRED,
    DROPPED,
    FAILED,
    HANDED_BACK,
    RETRYING,
    SKIPPED,
)

# Where Celery's ``worker_consumer`` setting finds the consumer below, and the app setting
# that holds the interval.
CONSUMER = "workers.flower_events:BatchedEventsConsumer"
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
    job received, started (sent in the batches above, so it costs little), and how its run's
    attempt ended (``outcome_event``). A group's job is noted, so that its events are sent as
    its runs' (``RunEventsDispatcher``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        group = (self.kwargs or {}).get(GROUP_ARGUMENT)
        if group is not None:
            _groups[self.id] = [(str(run_id), int(attempt)) for _, run_id, attempt in group]

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded" and self.id not in _groups:
            type, changed = outcome_event(_returned(fields.get("result")))
            fields = {**fields, **changed}
        super().send_event(type, **fields)


# The runs of the groups' jobs this main process holds: (run_id, attempt) by the job's task id.
_groups: dict[str, list[tuple[str, int]]] = {}
_ENDS = frozenset({"task-succeeded", "task-failed", "task-revoked", "task-rejected"})


class RunEventsDispatcher(EventDispatcher):  # type: ignore[misc]
    """Celery's event dispatcher, but the events of a group's job are sent as its runs': each
    run appears in Flower under the task id a job of its own would have (``<run_id>@<attempt>``),
    received, started, and ended as its attempt ended (from the job's result)."""

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        runs = _groups.get(fields.get("uuid", ""))
        if runs is None:
            return super().send(type, *args, **fields)
        if type in _ENDS:
            _groups.pop(fields["uuid"], None)
        for run_type, run_fields in _run_events(type, fields, runs):
            super().send(run_type, *args, **run_fields)
        return None


def _run_events(
    type: str, fields: dict[str, Any], runs: list[tuple[str, int]]
) -> list[tuple[str, dict[str, Any]]]:
    """The events of a group's runs for one event of the group's job."""
    if type == "task-succeeded":
        try:
            ended = ast.literal_eval(_returned(fields.get("result")))
        except (ValueError, SyntaxError):
            ended = []
        runtime = float(fields.get("runtime") or 0) / max(len(ended), 1)
        events = []
        for run_id, attempt, result in ended:
            run_type, changed = outcome_event(result)
            run_fields = fields | changed | {"uuid": f"{run_id}@{attempt}", "runtime": runtime}
            events.append((run_type, run_fields | {"result": repr(result)}))
        return events
    out = []
    for run_id, attempt in runs:
        run_fields = fields | {"uuid": f"{run_id}@{attempt}"}
        if type == "task-received":
            run_fields |= {"args": repr([run_id]), "kwargs": "{}"}
        out.append((type, run_fields))
    return out


class RunEvents(Events):  # type: ignore[misc]
    dispatcher_cls = "workers.flower_events:RunEventsDispatcher"


# The app's ``events`` class (Celery(..., events=EVENTS)), and how long a job's result's repr
# may be (a group's lists every run).
EVENTS = "workers.flower_events:RunEvents"
RESULT_REPR_LIMIT = 1_000_000


def outcome_event(result: str) -> tuple[str, dict[str, Any]]:
    """The task event (type, fields) that says how a job that returned ``result`` ended:
    a failed run is ``task-failed`` with its error, a cancelled one (or an attempt that lost
    its run) ``task-revoked``, a retried or handed-back attempt ``task-retried``, a job that
    had nothing to do ``task-skipped`` (Flower shows the state SKIPPED); the rest succeeded."""
    how, _, detail = result.partition(": ")
    if how == FAILED:
        return "task-failed", {"exception": detail or FAILED, "traceback": ""}
    if how in (CANCELLED, DROPPED):
        return "task-revoked", {"terminated": False, "signum": None, "expired": False}
    if how in (RETRYING, HANDED_BACK):
        return "task-retried", {"exception": detail or how, "traceback": ""}
    if how in (SKIPPED, DEFERRED):
        return "task-skipped", {"reason": detail}
    return "task-succeeded", {}


def _returned(result: Any) -> str:
    """The job's result as its main process sees it: Celery hands over its repr."""
    if isinstance(result, str):
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(result)
            if isinstance(value, str):
                return value
        return result
    return str(result)
