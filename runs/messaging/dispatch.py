"""Sends Celery jobs by name: the job name is the run's target. Never imports ``workers``.

A job's Celery task id (what Flower shows) leads to its run: ``<run_id>@<attempt>`` for the
job of a task run's attempt (every message for that attempt carries the same id, a re-sent
one included), ``<run_id>@plan.<random>`` for a job that plans a workflow run and
``<run_id>@<node_id>.<random>`` for one that runs a workflow step.
"""

from __future__ import annotations

import uuid

from celery import Celery

from runs.domain.runs import RunRef
from runs.messaging.celery_config import celery_config
from runs.settings import Settings


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self._app = app

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryDispatcher:
        app = Celery("runs-dispatch", set_as_current=False)
        app.conf.update(celery_config(settings))
        return cls(app)

    def dispatch(
        self,
        target: str,
        ref: RunRef,
        queue: str,
        *,
        node_id: str | None = None,
        countdown: float | None = None,
        attempt: int | None = None,
    ) -> None:
        # A job names its run by project and id: run ids are unique only inside a project.
        args = [ref.project_id, ref.run_id]
        if node_id is not None:
            args.append(node_id)
        self._app.send_task(
            target,
            args=args,
            queue=queue,
            countdown=countdown,
            ignore_result=True,
            task_id=job_id(ref.run_id, attempt=attempt, node_id=node_id),
        )

    def close(self) -> None:
        self._app.close()


def job_id(run_id: str, *, attempt: int | None = None, node_id: str | None = None) -> str:
    """The Celery task id of a job (see the module docstring)."""
    if attempt is not None and node_id is None:
        return f"{run_id}@{attempt}"
    return f"{run_id}@{node_id or 'plan'}.{uuid.uuid4().hex[:8]}"
