"""Workflow runs on real worker processes: each step a Celery job, state in SQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from runs.access import AccessService
from runs.catalog import DefinitionCatalog
from runs.dispatch import CeleryDispatcher
from runs.domain.projects import Project
from runs.domain.runs import Run, RunKind, RunRequest, RunStatus
from runs.events import RedisEventLog
from runs.routing import Router
from runs.service import RunService
from runs.workflow_state import WorkflowState
from tests.conftest import WorkerPool

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def services(
    worker_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog
) -> Iterator[tuple[RunService, WorkflowState]]:
    dispatcher = CeleryDispatcher.from_settings(worker_pool.settings)
    router = Router([], worker_pool.settings.default_queue)
    runs = RunService(
        pg_engine,
        dispatcher=dispatcher,
        events=event_log,
        router=router,
        catalog=DefinitionCatalog(pg_engine, cache_seconds=0),
        max_input_bytes=65536,
    )
    yield (
        runs,
        WorkflowState(pg_engine, runs=runs, events=event_log, dispatcher=dispatcher, router=router),
    )
    dispatcher.close()


@pytest.fixture
def live(services: tuple[RunService, WorkflowState]) -> RunService:
    return services[0]


@pytest.fixture
def waits(services: tuple[RunService, WorkflowState]) -> WorkflowState:
    return services[1]


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"wf-{uuid.uuid4().hex[:12]}")


def start(live: RunService, project: Project, workflow_id: str, input: Any = None) -> Run:
    run, _ = live.submit(
        project,
        RunRequest(
            kind=RunKind.WORKFLOW,
            owner_kind="project",
            owner_id=project.id,
            target=f"workflow:{workflow_id}",
            workflow_id=workflow_id,
            input=input,
        ),
    )
    return run


def wait_status(
    live: RunService, project: Project, run_id: str, statuses: set[RunStatus], timeout: float = 30
) -> Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = live.get(project, run_id)
        if run.status in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still {run.status} (wanted {statuses})")


TERMINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}


def events(live: RunService, project: Project, run_id: str) -> list[tuple[str, Any]]:
    page = live.events(project, run_id, after=0, limit=100).items
    return [(e.event_type, e.payload) for e in page]


def test_a_sequential_workflow_passes_results_from_step_to_step(
    live: RunService, project: Project
) -> None:
    run = start(live, project, "test/sequence", {"n": 4})
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {"n": 50} and done.kind is RunKind.WORKFLOW
    assert done.workflow_id == "test/sequence" and done.input == {"n": 4}
    seen = events(live, project, run.run_id)
    assert seen[0][0] == "RUN_STARTED" and seen[-1][0] == "RUN_FINISHED"
    steps = [(t, p["stepName"], p["status"]) for t, p in seen if t.startswith("STEP_")]
    assert steps == [
        ("STEP_STARTED", "one", "running"),
        ("STEP_FINISHED", "one", "completed"),
        ("STEP_STARTED", "two", "running"),
        ("STEP_FINISHED", "two", "completed"),
        ("STEP_STARTED", "three", "running"),
        ("STEP_FINISHED", "three", "completed"),
    ]


def test_the_demo_pipeline_completes(live: RunService, project: Project) -> None:
    run = start(live, project, "demo-pipeline", {"text": "one two three"})
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED and done.output == {"summary": "3 words"}
    assert done.logs is not None and done.logs.startswith("[analyze] INFO counting words")
