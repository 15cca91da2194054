"""Worker side of runs: definitions registry, Celery app, job execution and adapters."""

from workers.definitions.dsl import (
    Retry,
    branch,
    parallel,
    step,
    unless,
    wait_for_approval,
    wait_for_event,
    when,
)
from workers.definitions.errors import NonRetryableError, TaskFailed, WorkerError
from workers.definitions.registry import command, registry, schedule, task, workflow

__all__ = [
    "NonRetryableError",
    "Retry",
    "TaskFailed",
    "WorkerError",
    "branch",
    "command",
    "parallel",
    "registry",
    "schedule",
    "step",
    "task",
    "unless",
    "wait_for_approval",
    "wait_for_event",
    "when",
    "workflow",
]
