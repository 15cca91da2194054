"""``ctx.runs``: the run's project as the SDK sees it, from inside a task or a step.

It has the SDK's methods for starting and waiting on other runs (``create_task_run``,
``create_workflow_run``, ``get``, ``events``, ``cancel``, ``wait``) and answers with the same
models, but goes through the worker's own services instead of HTTP: no token, and the project
is always the run's. Runs started here are children of the run (``parent_run_id``) unless the
options say otherwise. A task that waits on another run holds its pool slot meanwhile: a pool
with one slot cannot run the other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Unpack

from runs.client.calls import (
    TERMINAL_STATUSES,
    Calls,
    TaskRunOptions,
    WorkflowRunOptions,
)
from runs.client.errors import WaitTimeout
from runs.domain.projects import Project
from runs.domain.runs import Run
from runs.schemas.common import PageInfo
from runs.schemas.runs import (
    CancelRunOut,
    CreateRunIn,
    CreateRunOut,
    RunEventListOut,
    RunEventOut,
    RunOut,
)
from runs.services.runs import RunService
from workers.definitions.errors import RunCancelled
from workers.execution.runtime import WorkerRuntime

POLL_INTERVALS = (0.05, 0.1, 0.2, 0.5, 1.0)


class ProjectRuns:
    def __init__(
        self,
        runs: RunService,
        project: Callable[[], Project],
        run_id: str,
        cancelled: threading.Event,
    ) -> None:
        self._runs = runs
        self._load_project = project
        self._project: Project | None = None
        self._run_id = run_id
        self._cancelled = cancelled

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = self._load_project()
        return self._project

    def create_task_run(self, target: str, **options: Unpack[TaskRunOptions]) -> CreateRunOut:
        options.setdefault("parent_run_id", self._run_id)
        return self._submit(Calls(self.project.id).create_task_run(target, options).body)

    def create_workflow_run(
        self, workflow: str, **options: Unpack[WorkflowRunOptions]
    ) -> CreateRunOut:
        options.setdefault("parent_run_id", self._run_id)
        return self._submit(Calls(self.project.id).create_workflow_run(workflow, options).body)

    def _submit(self, body: Any) -> CreateRunOut:
        # Checked as the API checks a request body, with the same messages.
        request = CreateRunIn.model_validate(body).to_request()
        run, duplicate = self._runs.create(self.project, request)
        return CreateRunOut(accepted=True, duplicate=duplicate, run=RunOut.from_run(run))

    def get(self, run_id: str) -> RunOut:
        return RunOut.from_run(self._runs.get(self.project, run_id))

    def events(self, run_id: str, *, after: int = 0, limit: int = 100) -> RunEventListOut:
        page = self._runs.events(self.project, run_id, after=after, limit=limit)
        return RunEventListOut(
            data=[RunEventOut.from_event(e) for e in page.items],
            page_info=PageInfo(next=page.next),
        )

    def cancel(self, run_id: str) -> CancelRunOut:
        cancelled, run = self._runs.cancel(self.project, run_id)
        return CancelRunOut(cancelled=cancelled, run=RunOut.from_run(run))

    def wait(self, run_id: str, *, timeout: float | None = None) -> RunOut:
        """The run once it has ended. Raises ``WaitTimeout`` after ``timeout`` seconds, and
        ``RunCancelled`` as soon as the waiting run itself is cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        polls = 0
        while True:
            run = self.get(run_id)
            if run.status in TERMINAL_STATUSES:
                return run
            pause = POLL_INTERVALS[min(polls, len(POLL_INTERVALS) - 1)]
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(run_id, timeout or 0)
                pause = min(pause, left)
            if self._cancelled.wait(pause):
                raise RunCancelled(f"run {self._run_id} was cancelled while it waited")
            polls += 1


def project_runs(runtime: WorkerRuntime, run: Run, cancelled: threading.Event) -> ProjectRuns:
    """``ctx.runs`` of an attempt of ``run`` (made when the task first uses it)."""
    return ProjectRuns(
        runtime.runs, lambda: runtime.access.find_project(run.project_id), run.run_id, cancelled
    )
