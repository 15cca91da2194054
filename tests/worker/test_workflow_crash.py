"""A workflow survives a worker process being SIGKILLed in the middle of a step."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from runs.domain.runs import RunKind, RunRequest, RunStatus
from runs.messaging.dispatch import CeleryDispatcher
from runs.messaging.routing import Router
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.services.workflows import WorkflowService
from runs.streams.event_log import RedisEventLog
from tests.conftest import base_settings, start_worker, stop_worker, wait_until_consuming
from tests.support.redis_hygiene import own

pytestmark = pytest.mark.worker


def pool_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_step_interrupted_by_sigkill_is_retried_and_finished_steps_are_not_rerun(
    postgres_url: str,
    redis_url: str,
    pg_engine: sa.Engine,
    event_log: RedisEventLog,
    tmp_path: Path,
) -> None:
    settings = base_settings(
        database_url=postgres_url,
        redis_url=redis_url,
        default_queue=own("runs-crash"),
        definitions=["workers.examples", "tests.support.definitions"],
    )
    log_path = tmp_path / "worker.log"
    # Short sweeps: the node's lease lapses 2 s after the kill, and a sweep re-sends its job
    # soon after (with the defaults that takes up to 40 s, the whole of this test's budget).
    fast_sweeps = {
        "RUNS_WORKER_LEASE_SECONDS": "2",
        "RUNS_SWEEP_INTERVAL_SECONDS": "0.5",
        "RUNS_PENDING_REDISPATCH_SECONDS": "3",
    }
    worker = start_worker(settings, log_path, concurrency=1, extra_env=fast_sweeps)
    dispatcher = CeleryDispatcher.from_settings(settings)
    try:
        wait_until_consuming(settings, worker, log_path)
        router = Router([], settings.default_queue)
        runs = RunService(
            pg_engine,
            dispatcher=dispatcher,
            events=event_log,
            router=router,
            catalog=DefinitionCatalog(pg_engine, cache_seconds=0),
            max_input_bytes=65536,
        )
        state = WorkflowService(pg_engine, runs=runs, events=event_log, dispatcher=dispatcher)
        project = AccessService(pg_engine).create_project(f"k-{uuid.uuid4().hex[:10]}")
        run, _ = runs.create(
            project,
            RunRequest(
                kind=RunKind.WORKFLOW,
                owner_kind="project",
                owner_id=project.id,
                target="workflow:test/crashable",
                workflow_id="test/crashable",
            ),
        )
        deadline = time.monotonic() + 20
        while (slow := state.nodes(run.ref).get("slow")) is None or slow.status != "running":
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        children = pool_children(worker.pid)
        assert len(children) == 1
        os.kill(children[0], signal.SIGKILL)

        deadline = time.monotonic() + 40
        while (current := runs.get(project, run.run_id)).status not in (
            RunStatus.COMPLETED,
            RunStatus.FAILED,
        ):
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.1)
        assert current.status is RunStatus.COMPLETED, current.error
        nodes = state.nodes(run.ref)
        assert nodes["before"].attempt == 1, "a finished step ran again"
        assert nodes["slow"].attempt == 2 and nodes["after"].attempt == 1
        started = [
            (e.payload["stepName"], e.payload["attempt"])
            for e in runs.events(project, run.run_id, after=0, limit=100).items
            if e.event_type == "STEP_STARTED"
        ]
        assert started == [("before", 1), ("slow", 1), ("slow", 2), ("after", 1)]
    finally:
        dispatcher.close()
        stop_worker(worker)
