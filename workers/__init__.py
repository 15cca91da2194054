"""Worker side of runs: definitions registry, Celery app, job execution and adapters."""

from workers.registry import registry, task

__all__ = ["registry", "task"]
