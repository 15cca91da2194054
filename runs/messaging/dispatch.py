"""Sends Celery jobs by name: the job name is the run's target. Never imports ``workers``.

A job's Celery task id (what Flower shows) leads to its run: ``<run_id>@<attempt>`` for the
job of a task run's attempt (every message for that attempt carries the same id, a re-sent
one included), ``<run_id>@plan.<random>`` for a job that plans a workflow run and
``<run_id>@<node_id>.<random>`` for one that runs a workflow step. A job of runs that travel
together (``dispatch_group``) has an id of its own, and Flower shows each of its runs under the
id a job of that run alone would have.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from celery import Celery

from runs.domain.runs import RunRef
from runs.messaging.celery_config import celery_config
from runs.settings import Settings

# A group's job carries its runs in this keyword argument, as [project_id, run_id, attempt]
# lists; its task id starts with the prefix.
GROUP_ARGUMENT = "group"
GROUP_PREFIX = "group-"


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

    def dispatch_group(self, target: str, jobs: Sequence[tuple[RunRef, int]], queue: str) -> None:
        # One message for runs that travel together; its task id is the group's own (Flower
        # shows each run under its own id: workers/flower_events.py).
        group = [[ref.project_id, ref.run_id, attempt] for ref, attempt in jobs]
        self._app.send_task(
            target,
            kwargs={GROUP_ARGUMENT: group},
            queue=queue,
            ignore_result=True,
            task_id=f"{GROUP_PREFIX}{uuid.uuid4().hex}",
        )

    def close(self) -> None:
        self._app.close()


def job_id(run_id: str, *, attempt: int | None = None, node_id: str | None = None) -> str:
    """The Celery task id of a job (see the module docstring)."""
    if attempt is not None and node_id is None:
        return f"{run_id}@{attempt}"
    return f"{run_id}@{node_id or 'plan'}.{uuid.uuid4().hex[:8]}"
