"""Sends Celery jobs by name: the job name is the run's target. Never imports ``workers``."""

from __future__ import annotations

from celery import Celery

from runs.celery_config import celery_config
from runs.settings import Settings


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self._app = app

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryDispatcher:
        app = Celery("runs-dispatch", set_as_current=False)
        app.conf.update(celery_config(settings))
        return cls(app)

    def dispatch(self, target: str, run_id: str, queue: str) -> None:
        self._app.send_task(target, args=[run_id], queue=queue, ignore_result=True)

    def close(self) -> None:
        self._app.close()
