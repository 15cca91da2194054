"""The job: claim the run, resolve its definition, run it through an adapter, record, emit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from runs.domain.events import NewEvent, started_events
from runs.domain.runs import Outcome, RunError, RunStatus
from workers.adapters import run_in_process
from workers.context import TaskContext
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def execute(runtime: WorkerRuntime, run_id: str) -> str:
    """Execute one attempt of ``run_id``; returns what happened, for the worker's log."""
    service = runtime.service
    run = service.claim(
        run_id, worker=runtime.worker_id, lease_seconds=runtime.settings.worker_lease_seconds
    )
    if run is None:
        return "skipped: not pending"
    if not service.emit(run_id, started_events(run.target)):
        return "skipped: cancelled before it started"
    try:
        definition = runtime.registry.resolve(run.target)
    except LookupError as exc:
        service.finish(
            run, Outcome(RunStatus.FAILED, error=RunError(str(exc), code="unknown_target"))
        )
        return "failed: unknown target"
    cancel_flag = threading.Event()
    ctx = TaskContext(
        run_id=run.run_id,
        project_id=run.project_id,
        target=run.target,
        attempt=run.attempt,
        config=run.config,
        input=run.input,
        publish=lambda events: _publish(runtime, run_id, events, cancel_flag),
        cancel_event=cancel_flag,
    )
    with runtime.monitor.watch(run_id, cancel_flag):
        outcome = run_in_process(definition, ctx)
    if not service.finish(run, outcome):
        return "dropped: the run was no longer ours (cancelled)"
    return outcome.status.value


def _publish(
    runtime: WorkerRuntime, run_id: str, events: Sequence[NewEvent], flag: threading.Event
) -> None:
    if not runtime.service.emit(run_id, events):
        flag.set()  # the stream is closed: the run was cancelled
