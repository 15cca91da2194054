"""Workflow steps run under the same guard as task runs: a step that ignores its timeout is
interrupted, and a command step's process tree dies with its cancelled run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from runs.domain.projects import Project
from runs.domain.runs import Run, RunKind, RunRequest, RunStatus
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import WorkerPool
from tests.support.durable_support import Live, live_services, processes_of_run
from tests.support.helpers import task_request

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def live(
    durable_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog
) -> Iterator[Live]:
    with live_services(durable_pool.settings, pg_engine, event_log) as services:
        yield services


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"s-{uuid.uuid4().hex[:12]}")


def start(live: Live, project: Project, workflow_id: str) -> Run:
    run, _ = live.runs.create(
        project,
        RunRequest(
            kind=RunKind.WORKFLOW,
            owner_kind="project",
            owner_id=project.id,
            target=f"workflow:{workflow_id}",
            workflow_id=workflow_id,
        ),
    )
    return run


def test_a_step_spinning_past_its_timeout_is_interrupted_and_fails_the_workflow(
    live: Live, project: Project
) -> None:
    began = time.monotonic()
    run = start(live, project, "durable/spinning-step")
    done = live.wait_terminal(project, run.run_id, timeout=20)
    assert done.status is RunStatus.FAILED
    assert time.monotonic() - began < 8  # timeout 1 s + grace 1 s, plus scheduling
    events = live.runs.events(project, run.run_id, after=0, limit=100).items
    finished = [e.payload for e in events if e.event_type == "STEP_FINISHED"]
    assert (
        finished and finished[-1]["status"] == "failed" and "timed out" in finished[-1]["message"]
    )
    # The pool process that ran it is free again.
    echo, _ = live.runs.create(project, task_request(project, "task:durable/pid", config={}))
    assert live.wait_terminal(project, echo.run_id, timeout=10).status is RunStatus.COMPLETED


def test_cancelling_a_workflow_kills_the_process_tree_of_its_command_step(
    live: Live, project: Project
) -> None:
    run = start(live, project, "durable/command-step")
    deadline = time.monotonic() + 15
    while len(processes_of_run(run.run_id)) < 3:
        assert time.monotonic() < deadline, "the command step's tree did not start"
        time.sleep(0.05)
    cancelled, _ = live.runs.cancel(project, run.run_id)
    assert cancelled
    deadline = time.monotonic() + 5
    while processes_of_run(run.run_id):
        assert time.monotonic() < deadline, f"left behind: {processes_of_run(run.run_id)}"
        time.sleep(0.05)
    assert live.runs.get(project, run.run_id).status is RunStatus.CANCELLED
