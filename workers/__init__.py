"""Worker side of runs: definitions registry, Celery app, job execution and adapters."""

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
from workers.registry import registry, task, workflow

__all__ = [
    "Retry",
    "branch",
    "parallel",
    "registry",
    "step",
    "task",
    "unless",
    "wait_for_approval",
    "wait_for_event",
    "when",
    "workflow",
]
