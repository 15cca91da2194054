"""What the durability test modules share: services wired to a worker pool's queue, waits,
and a look at the processes a run left behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from runs.domain.projects import Project
from runs.domain.runs import Run, RunStatus
from runs.messaging.dispatch import CeleryDispatcher
from runs.messaging.routing import Router
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog


@dataclass
class Live:
    """The services of a client of one worker pool (jobs go to the pool's queue)."""

    runs: RunService
    attempts: AttemptService
    dispatcher: CeleryDispatcher

    def wait_terminal(self, project: Project, run_id: str, timeout: float = 30) -> Run:
        return self.wait_for(project, run_id, lambda r: r.status.is_terminal, timeout)

    def wait_running(self, project: Project, run_id: str, timeout: float = 30) -> Run:
        return self.wait_for(project, run_id, lambda r: r.status is RunStatus.RUNNING, timeout)

    def wait_for(self, project: Project, run_id: str, check: object, timeout: float = 30) -> Run:
        deadline = time.monotonic() + timeout
        run = self.runs.get(project, run_id)
        while time.monotonic() < deadline:
            run = self.runs.get(project, run_id)
            if check(run):  # type: ignore[operator]
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} is {run.status} after {timeout} s: {run}")

    def event_types(self, project: Project, run_id: str) -> list[str]:
        page = self.runs.events(project, run_id, after=0, limit=1000)
        return [e.event_type for e in page.items]


@contextmanager
def live_services(settings: Settings, engine: sa.Engine, events: RedisEventLog) -> Iterator[Live]:
    dispatcher = CeleryDispatcher.from_settings(settings)
    try:
        yield Live(
            runs=RunService(
                engine,
                dispatcher=dispatcher,
                events=events,
                router=Router([], settings.default_queue),
                catalog=DefinitionCatalog(engine, cache_seconds=0),
                max_input_bytes=65536,
                max_timeout_seconds=settings.max_timeout_seconds,
                group_size=settings.group_max_runs,
            ),
            attempts=AttemptService(engine, dispatcher=dispatcher, events=events),
            dispatcher=dispatcher,
        )
    finally:
        dispatcher.close()


def processes_of_run(run_id: str) -> list[int]:
    """Pids of live processes whose environment carries RUNS_RUN_ID=<run_id>."""
    marker = f"RUNS_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return [p for p in found if p != os.getpid()]
