"""runs: durable, project-scoped task and workflow runs on Celery."""

__version__ = "0.1.0"
