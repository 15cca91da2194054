"""Workflow runs on real worker processes: each step a Celery job, state in SQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from runs.domain.projects import Project
from runs.domain.runs import Run, RunKind, RunRef, RunRequest, RunStatus
from runs.messaging.dispatch import CeleryDispatcher
from runs.messaging.routing import Router
from runs.persistence.records import RunFilters
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.services.workflows import WorkflowService
from runs.streams.event_log import RedisEventLog
from tests.conftest import WorkerPool

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def services(
    worker_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog
) -> Iterator[tuple[RunService, WorkflowService]]:
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
        WorkflowService(pg_engine, runs=runs, events=event_log, dispatcher=dispatcher),
    )
    dispatcher.close()


@pytest.fixture
def live(services: tuple[RunService, WorkflowService]) -> RunService:
    return services[0]


@pytest.fixture
def waits(services: tuple[RunService, WorkflowService]) -> WorkflowService:
    return services[1]


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"wf-{uuid.uuid4().hex[:12]}")


def start(live: RunService, project: Project, workflow_id: str, input: Any = None) -> Run:
    run, _ = live.create(
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


def node_statuses(waits: WorkflowService, ref: RunRef) -> dict[str, str]:
    return {k: v.status.value for k, v in waits.nodes(ref).items()}


def test_parallel_steps_run_at_the_same_time_on_two_workers(
    live: RunService, project: Project, waits: WorkflowService
) -> None:
    run = start(live, project, "test/parallel-sleeps")
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED, done.error
    nodes = waits.nodes(run.ref)
    left, right = nodes["left"], nodes["right"]
    assert left.started_at and right.started_at and left.completed_at and right.completed_at
    overlap = min(left.completed_at, right.completed_at) - max(left.started_at, right.started_at)
    assert overlap.total_seconds() > 0.5, "the two 1-second steps did not overlap"
    assert done.output == {"left": {"slept": 1.0}, "right": {"slept": 1.0}}


def test_a_race_takes_the_first_result_and_cancels_the_rest(
    live: RunService, project: Project, waits: WorkflowService
) -> None:
    run = start(live, project, "test/race")
    done = wait_status(live, project, run.run_id, TERMINAL, timeout=15)
    assert done.status is RunStatus.COMPLETED and done.output == {"won": "fast"}
    statuses = node_statuses(waits, run.ref)
    assert statuses["fast"] == "completed" and statuses["slow"] in ("cancelled", "skipped")
    stopped = [
        p
        for t, p in events(live, project, run.run_id)
        if t == "STEP_FINISHED" and p["stepName"] == "slow"
    ]
    assert [p["status"] for p in stopped] == ["cancelled"]


def test_all_settled_reports_every_outcome_and_does_not_fail_the_run(
    live: RunService, project: Project
) -> None:
    run = start(live, project, "test/all-settled")
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {"seen": ["bad", "good"]}


@pytest.mark.parametrize(
    ("big", "taken", "skipped"), [(True, "big", "small"), (False, "small", "big")]
)
def test_a_branch_runs_one_arm_and_skips_the_other(
    live: RunService, project: Project, waits: WorkflowService, big: bool, taken: str, skipped: str
) -> None:
    run = start(live, project, "test/branch", {"big": big})
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output["pick"] == {"size": taken}
    statuses = node_statuses(waits, run.ref)
    assert statuses[taken] == "completed" and statuses[skipped] == "skipped"
    assert statuses["bonus"] == "skipped" and statuses["extra"] == "completed"


def test_a_step_is_retried_until_it_succeeds(live: RunService, project: Project) -> None:
    run = start(live, project, "test/retry")
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED and done.output == {"attempts": 3}
    finished = [p for t, p in events(live, project, run.run_id) if t == "STEP_FINISHED"]
    assert [(p["status"], p["attempt"]) for p in finished] == [
        ("failed", 1),
        ("failed", 2),
        ("completed", 3),
    ]


def test_a_failed_step_fails_the_run_and_names_the_node(
    live: RunService, project: Project, waits: WorkflowService
) -> None:
    run = start(live, project, "test/failing")
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.FAILED and done.error is not None
    assert "boom" in done.error.message and done.error.detail["node_id"] == "boom"
    assert node_statuses(waits, run.ref)["never"] == "skipped"
    assert events(live, project, run.run_id)[-1][0] == "RUN_ERROR"


def test_an_approval_resumes_a_waiting_run(
    live: RunService, project: Project, waits: WorkflowService
) -> None:
    run = start(live, project, "test/approval")
    parked = wait_status(live, project, run.run_id, {RunStatus.WAITING})
    assert parked.waiting_reason == "approval:review"
    waits.approve(project, run.run_id, "review", approved=True, comment="fine")
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED and done.output == {"approved": True}


def test_a_rejected_approval_fails_the_run(
    live: RunService, project: Project, waits: WorkflowService
) -> None:
    run = start(live, project, "test/approval")
    wait_status(live, project, run.run_id, {RunStatus.WAITING})
    waits.approve(project, run.run_id, "review", approved=False, comment="no")
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.FAILED and done.error is not None
    assert done.error.code == "rejected"


def test_a_signal_resumes_a_run_waiting_for_that_event(
    live: RunService, project: Project, waits: WorkflowService
) -> None:
    run = start(live, project, "test/event")
    parked = wait_status(live, project, run.run_id, {RunStatus.WAITING})
    assert parked.waiting_reason == "event:payment.received:hook"
    from runs.domain.errors import Conflict

    with pytest.raises(Conflict):
        waits.signal(project, run.run_id, "other.event", {})
    assert waits.signal(project, run.run_id, "payment.received", {"amount": 5}) == ["hook"]
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED and done.output == {"amount": 5}


def test_a_wait_that_times_out_fails_the_run(live: RunService, project: Project) -> None:
    run = start(live, project, "test/approval-timeout")
    done = wait_status(live, project, run.run_id, TERMINAL, timeout=15)
    assert done.status is RunStatus.FAILED and done.error is not None
    assert done.error.code == "timeout"


def test_cancelling_a_workflow_stops_its_running_step(
    live: RunService, project: Project, waits: WorkflowService
) -> None:
    run = start(live, project, "test/long")
    deadline = time.monotonic() + 15
    while node_statuses(waits, run.ref).get("nap") != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled, after = live.cancel(project, run.run_id)
    assert cancelled and after.status is RunStatus.CANCELLED
    assert node_statuses(waits, run.ref) == {"nap": "cancelled", "after": "skipped"}
    time.sleep(1.0)
    assert live.get(project, run.run_id).status is RunStatus.CANCELLED
    assert events(live, project, run.run_id)[-1][0] == "RUN_ERROR"


def test_a_step_can_start_a_child_run_that_lists_under_its_parent(
    live: RunService, project: Project
) -> None:
    run = start(live, project, "test/child")
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED, done.error
    child_id = done.output["child"]
    child = wait_status(live, project, child_id, TERMINAL)
    assert child.parent_run_id == run.run_id and child.root_run_id == run.run_id
    children = live.list(project, RunFilters(parent_run_id=run.run_id), cursor=None, limit=10)
    assert [c.run_id for c in children.items] == [child_id]
    roots = live.list(project, RunFilters(root_only=True), cursor=None, limit=10)
    assert child_id not in [r.run_id for r in roots.items]


def test_cancelling_a_workflow_cancels_its_child_runs(live: RunService, project: Project) -> None:
    run = start(live, project, "test/parent-of-sleeper")
    deadline = time.monotonic() + 15
    child_id = None
    while child_id is None:
        assert time.monotonic() < deadline, "no child started"
        started = [p for t, p in events(live, project, run.run_id) if t == "CHILD_STARTED"]
        child_id = started[0]["child"] if started else None
        time.sleep(0.05)
    cancelled, _ = live.cancel(project, run.run_id)
    assert cancelled
    child = live.get(project, child_id)
    assert child.status is RunStatus.CANCELLED and child.parent_run_id == run.run_id


@pytest.mark.parametrize(("text", "route"), [("a b c d e", "long"), ("a b", "short")])
def test_the_fan_out_example_runs_a_parallel_group_then_a_branch(
    live: RunService, project: Project, text: str, route: str
) -> None:
    run = start(live, project, "fan-out", {"text": text})
    done = wait_status(live, project, run.run_id, TERMINAL)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {"shout": text.upper(), "route": route}
