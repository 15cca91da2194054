"""Runs that travel together, on a real worker (prefork, 2 processes): runs created together are
one job, each run still runs, ends and is seen on its own; a slow run does not hold the others
back; a cancel stops one run of a group and no other."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from runs.domain.events import RUN_FINISHED, RUN_STARTED
from runs.domain.projects import Project
from runs.domain.runs import Run, RunStatus
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import WorkerPool
from tests.support.durable_support import Live, live_services
from tests.support.helpers import task_request

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def live(worker_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog) -> Iterator[Live]:
    with live_services(worker_pool.settings, pg_engine, event_log) as services:
        yield services


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"g-{uuid.uuid4().hex[:12]}")


def create_together(live: Live, project: Project, *configs: dict[str, float]) -> list[Run]:
    requests = [(project, task_request(project, "task:sleep", config=c)) for c in configs]
    answers = live.runs.create_many(requests)
    made = [answer[0] for answer in answers if not isinstance(answer, Exception)]
    assert len(made) == len(configs)
    return made


def test_runs_created_together_travel_in_one_job_and_each_ends_on_its_own(
    live: Live, project: Project, worker_pool: WorkerPool
) -> None:
    made = create_together(live, project, *({"seconds": 0.001} for _ in range(12)))
    for run in made:
        ended = live.wait_terminal(project, run.run_id)
        assert ended.status is RunStatus.COMPLETED and ended.attempt == 1
        assert ended.output == {"slept": 0.001}
        assert ended.started_at is not None and ended.completed_at is not None
        assert ended.created_at <= ended.started_at <= ended.completed_at
        events = live.runs.events(project, run.run_id, after=0, limit=99).items
        assert events[0].event_type == RUN_STARTED and events[-1].event_type == RUN_FINISHED
        assert [e.event_id for e in events] == list(range(1, len(events) + 1))
        assert any("sleeping" in str(e.payload) for e in events)
    log = worker_pool.log()
    assert "group-" in log  # one job for the group ...
    for run in made:  # ... and a line for each of its runs (or its own job's, handed off)
        in_group = f"run {run.run_id} attempt 1: completed" in log
        assert in_group or f"[{run.run_id}@1] succeeded" in log


def test_a_slow_run_does_not_hold_back_the_runs_of_its_group(
    live: Live, project: Project, worker_pool: WorkerPool
) -> None:
    slow, *quick = create_together(
        live, project, {"seconds": 2.0}, *({"seconds": 0.001} for _ in range(6))
    )
    bound = timedelta(milliseconds=worker_pool.settings.worker_handoff_ms)
    ended_slow = live.wait_terminal(project, slow.run_id)
    assert ended_slow.status is RunStatus.COMPLETED
    for run in quick:
        ended = live.wait_terminal(project, run.run_id)
        assert ended.status is RunStatus.COMPLETED and ended.attempt == 1
        assert ended.completed_at is not None and ended_slow.completed_at is not None
        assert ended.completed_at < ended_slow.completed_at  # not after the slow one
        assert ended.started_at is not None and ended_slow.started_at is not None
        # started by another process within the bound (and some slack on a busy machine)
        assert ended.started_at - ended_slow.started_at < bound + timedelta(seconds=0.5)
        assert len(ended.attempts) == 1
    assert "handed" in worker_pool.log()


def test_a_cancel_stops_one_run_of_a_group_and_no_other(live: Live, project: Project) -> None:
    made = create_together(live, project, *({"seconds": 1.0} for _ in range(3)))
    live.wait_running(project, made[0].run_id)
    live.runs.cancel(project, made[1].run_id)
    ended = [live.wait_terminal(project, run.run_id) for run in made]
    assert [run.status for run in ended] == [
        RunStatus.COMPLETED,
        RunStatus.CANCELLED,
        RunStatus.COMPLETED,
    ]
    cancelled = live.wait_for(
        project, made[1].run_id, lambda run: run.cancel_stopped_at is not None
    )
    assert cancelled.status is RunStatus.CANCELLED
    assert live.event_types(project, made[1].run_id)[-1] == "RUN_ERROR"
