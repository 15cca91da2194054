"""Worker side of runs: definitions registry, Celery app, job execution and adapters."""

from workers.adapters import NonRetryableError, TaskFailed
from workers.dsl import (
    Retry,
    branch,
    parallel,
    step,
    unless,
    wait_for_approval,
    wait_for_event,
    when,
)
from workers.registry import command, registry, schedule, task, workflow

__all__ = [
    "NonRetryableError",
    "Retry",
    "TaskFailed",
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
