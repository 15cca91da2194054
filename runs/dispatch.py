"""Sends Celery jobs by name: the job name is the run's target. Never imports ``workers``."""

from __future__ import annotations

from celery import Celery

from runs.celery_config import celery_config
from runs.domain.runs import RunRef
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
    ) -> None:
        # A job names its run by project and id: run ids are unique only inside a project.
        args = [ref.project_id, ref.run_id]
        if node_id is not None:
            args.append(node_id)
        self._app.send_task(target, args=args, queue=queue, countdown=countdown, ignore_result=True)

    def close(self) -> None:
        self._app.close()
