"""Runs executed by a real Celery worker (prefork, subprocess) on PostgreSQL and Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from runs.domain.projects import Project
from runs.domain.runs import Run, RunError, RunStatus
from runs.messaging.celery_config import celery_config
from runs.messaging.dispatch import CeleryDispatcher
from runs.messaging.routing import Router
from runs.schemas.runs import RunOut
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog
from tests.conftest import (
    BROKERS,
    WORKER_TARGETS,
    WorkerPool,
    base_settings,
    start_worker,
    stop_worker,
    wait_until_consuming,
)
from tests.support.helpers import task_request
from tests.support.redis_hygiene import own

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module", params=BROKERS)
def pool(request: pytest.FixtureRequest) -> WorkerPool:
    """The worker pool of the broker under test: every test here runs on Redis and RabbitMQ."""
    name = "worker_pool" if request.param == "redis" else "amqp_worker_pool"
    found: WorkerPool = request.getfixturevalue(name)
    return found


@pytest.fixture(scope="module")
def live(pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog) -> Iterator[RunService]:
    dispatcher = CeleryDispatcher.from_settings(pool.settings)
    yield RunService(
        pg_engine,
        dispatcher=dispatcher,
        events=event_log,
        router=Router([], pool.settings.default_queue),
        catalog=DefinitionCatalog(pg_engine, cache_seconds=0),
        max_input_bytes=65536,
    )
    dispatcher.close()


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    import uuid

    return AccessService(pg_engine).create_project(f"w-{uuid.uuid4().hex[:12]}")


def wait_terminal(service: RunService, project: Project, run_id: str, timeout: float = 20) -> Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = service.get(project, run_id)
        if run.status.is_terminal:
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} still {run.status} after {timeout} s")


def event_types(service: RunService, project: Project, run_id: str) -> list[str]:
    return [e.event_type for e in service.events(project, run_id, after=0, limit=100).items]


def test_the_worker_registers_its_definitions_in_the_catalogue(
    pool: WorkerPool, pg_engine: sa.Engine
) -> None:
    targets = {d.target for d in DefinitionCatalog(pg_engine, cache_seconds=0).list()}
    assert set(WORKER_TARGETS) <= targets


def test_an_echo_run_completes_with_its_terminal_record_and_lifecycle_events(
    live: RunService, project: Project
) -> None:
    run, _ = live.create(project, task_request(project, config={"a": [1, 2]}))
    done = wait_terminal(live, project, run.run_id)
    assert done.status is RunStatus.COMPLETED
    assert done.output == {"a": [1, 2]}
    assert done.exit_code == 0 and done.error is None and done.attempt == 1
    assert done.started_at and done.completed_at and done.duration_ms is not None
    assert event_types(live, project, run.run_id) == [
        "RUN_STARTED",
        "STEP_STARTED",
        "STEP_FINISHED",
        "RUN_FINISHED",
    ]


def test_a_failing_task_fails_the_run_with_its_error_and_logs(
    live: RunService, project: Project
) -> None:
    run, _ = live.create(project, task_request(project, "task:fail", config={"message": "nope"}))
    done = wait_terminal(live, project, run.run_id)
    assert done.status is RunStatus.FAILED and done.exit_code == 1
    assert done.error is not None
    assert done.error.message == "nope" and done.error.code == "example_failure"
    assert done.logs is not None and "failing on purpose: nope" in done.logs
    types = event_types(live, project, run.run_id)
    assert types[-1] == "RUN_ERROR" and types.count("RUN_ERROR") == 1
    assert "RUN_LOG_CAPTURED" in types


def test_an_unexpected_exception_is_recorded_with_its_type(
    live: RunService, project: Project
) -> None:
    run, _ = live.create(project, task_request(project, "task:test/crash"))
    done = wait_terminal(live, project, run.run_id)
    assert done.status is RunStatus.FAILED and done.error is not None
    assert done.error.message == "boom" and done.error.code == "task_error"
    assert done.error.detail["type"] == "ValueError"


def test_async_tasks_run(live: RunService, project: Project) -> None:
    run, _ = live.create(project, task_request(project, "task:test/async", config={"x": 1}))
    done = wait_terminal(live, project, run.run_id)
    assert done.status is RunStatus.COMPLETED
    assert done.output == {"async": True, "config": {"x": 1}}


def test_logs_custom_events_and_artifacts_reach_the_run_and_its_events(
    live: RunService, project: Project
) -> None:
    run, _ = live.create(project, task_request(project, "task:test/observable"))
    done = wait_terminal(live, project, run.run_id)
    assert done.status is RunStatus.COMPLETED
    assert done.logs == "INFO first line\nWARNING second line"
    assert done.artifacts == [
        {"name": "report.csv", "uri": "s3://bucket/report.csv", "content_type": "text/csv"}
    ]
    events = live.events(project, run.run_id, after=0, limit=100).items
    assert [e.event_type for e in events] == [
        "RUN_STARTED",
        "STEP_STARTED",
        "RUN_LOG_CAPTURED",
        "PROGRESS_REPORTED",
        "RUN_LOG_CAPTURED",
        "STEP_FINISHED",
        "RUN_FINISHED",
    ]
    assert events[3].payload == {"type": "PROGRESS_REPORTED", "done": 1, "total": 2}
    assert [e.event_id for e in events] == sorted({e.event_id for e in events})


def test_input_and_output_models_validate_the_config_and_the_result(
    live: RunService, project: Project
) -> None:
    good, _ = live.create(project, task_request(project, "task:test/typed", config={"n": 21}))
    bad, _ = live.create(project, task_request(project, "task:test/typed", config={"n": "x"}))
    unserialisable, _ = live.create(project, task_request(project, "task:test/bad-output"))
    assert wait_terminal(live, project, good.run_id).output == {"doubled": 42}
    failed = wait_terminal(live, project, bad.run_id)
    assert failed.status is RunStatus.FAILED and failed.error is not None
    assert failed.error.code == "invalid_input" and "n" in failed.error.message
    broken = wait_terminal(live, project, unserialisable.run_id)
    assert broken.error is not None and broken.error.code == "invalid_output"


def test_the_same_job_delivered_twice_runs_once(
    live: RunService, project: Project, pool: WorkerPool
) -> None:
    run, _ = live.create(project, task_request(project))
    dispatcher = CeleryDispatcher.from_settings(pool.settings)
    dispatcher.dispatch("task:echo", run.ref, pool.settings.default_queue)
    dispatcher.close()
    done = wait_terminal(live, project, run.run_id)
    time.sleep(0.5)
    assert done.attempt == 1
    assert event_types(live, project, run.run_id).count("RUN_STARTED") == 1


def test_cancel_stops_running_work_and_frees_the_worker(live: RunService, project: Project) -> None:
    sleepers = [
        live.create(project, task_request(project, "task:sleep", config={"seconds": 60}))[0]
        for _ in range(2)
    ]
    deadline = time.monotonic() + 20
    while any(live.get(project, s.run_id).status is not RunStatus.RUNNING for s in sleepers):
        assert time.monotonic() < deadline, "sleepers did not start"
        time.sleep(0.05)
    for sleeper in sleepers:
        cancelled, run = live.cancel(project, sleeper.run_id)
        assert cancelled and run.status is RunStatus.CANCELLED
    # Both pool processes were busy sleeping; a new run completes only if the sleeps stopped.
    started = time.monotonic()
    echo, _ = live.create(project, task_request(project))
    assert wait_terminal(live, project, echo.run_id, timeout=10).status is RunStatus.COMPLETED
    assert time.monotonic() - started < 5
    for sleeper in sleepers:
        final = live.get(project, sleeper.run_id)
        assert final.status is RunStatus.CANCELLED and final.output is None
        assert event_types(live, project, sleeper.run_id)[-1] == "RUN_ERROR"


def test_a_visible_terminal_event_implies_the_terminal_record(
    live: RunService, project: Project, event_log: RedisEventLog
) -> None:
    for _ in range(5):
        run, _ = live.create(project, task_request(project))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            types = [e.event_type for e in event_log.read(run.ref, after=0, limit=100)]
            if "RUN_FINISHED" in types:
                assert live.get(project, run.run_id).status is RunStatus.COMPLETED
                break
        else:
            raise AssertionError("no terminal event")


def test_events_of_a_finished_run_survive_the_loss_of_its_stream(
    live: RunService, project: Project, event_log: RedisEventLog
) -> None:
    run, _ = live.create(project, task_request(project, "task:test/observable"))
    wait_terminal(live, project, run.run_id)
    before = live.events(project, run.run_id, after=0, limit=100).items
    event_log.client.delete(f"runs:{{{run.ref.key}}}:events", f"runs:{{{run.ref.key}}}:meta")
    assert event_log.read(run.ref, after=0, limit=100) == []
    assert live.events(project, run.run_id, after=0, limit=100).items == before


CLEANED = "lone \ufffd nul \ufffd end"


def test_what_a_task_produces_is_stored_readable_with_invalid_text_replaced(
    live: RunService, project: Project
) -> None:
    """Lone surrogates and NUL characters become U+FFFD and non-finite numbers null, in the
    output, logs, artifacts and event payloads, so that every read of the run answers."""
    run, _ = live.create(project, task_request(project, "task:test/unclean"))
    done = wait_terminal(live, project, run.run_id)
    assert done.status is RunStatus.COMPLETED, done.error
    assert done.output == {CLEANED: [CLEANED, None]}
    assert done.logs == f"INFO {CLEANED}"
    assert done.artifacts == [{"name": CLEANED, "metadata": {"inf": None}}]
    events = live.events(project, run.run_id, after=0, limit=100).items
    custom = next(e for e in events if e.event_type == "UNCLEAN_REPORTED")
    assert custom.payload == {"type": "UNCLEAN_REPORTED", CLEANED: CLEANED, "nan": None}
    logged = next(e for e in events if e.event_type == "RUN_LOG_CAPTURED")
    assert logged.payload["logs"] == f"INFO {CLEANED}"
    assert RunOut.from_run(done).model_dump(mode="json")["output"] == {CLEANED: [CLEANED, None]}


def test_a_failure_message_with_invalid_text_is_stored_readable(
    live: RunService, project: Project
) -> None:
    run, _ = live.create(project, task_request(project, "task:test/unclean-failure"))
    done = wait_terminal(live, project, run.run_id)
    assert done.status is RunStatus.FAILED
    assert done.error == RunError(message=CLEANED, code="unclean", detail={CLEANED: None})
    assert done.attempts[-1].error.message == CLEANED
    terminal = live.events(project, run.run_id, after=0, limit=100).items[-1]
    assert terminal.payload["message"] == CLEANED


@contextmanager
def _task_events(settings: Settings) -> Iterator[list[dict[str, Any]]]:
    """The task events the workers of ``settings`` send, as Flower receives them."""
    app = Celery("events-probe", set_as_current=False)
    app.conf.update(celery_config(settings))
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        # Its queue named as this session's, which deletes its binding at the end.
        receiver = app.events.Receiver(conn, handlers={"*": seen.append}, node_id=own("probe"))
        listening = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True
        )
        listening.start()
        try:
            time.sleep(0.5)  # the receiver's queue is bound to the events exchange by now
            yield seen
        finally:
            receiver.should_stop = True
            listening.join(timeout=5)


def test_the_worker_tells_flower_a_job_was_received_and_how_it_ended(
    live: RunService, project: Project, pool: WorkerPool
) -> None:
    """Task events as Flower needs them: the job received (its target as the task name, its id
    the run's id and attempt), started, and its outcome."""
    with _task_events(pool.settings) as seen:
        run, _ = live.create(project, task_request(project))
        assert wait_terminal(live, project, run.run_id).status is RunStatus.COMPLETED
        received = _await_event(seen, lambda e: run.run_id in str(e.get("args")))
        assert received["type"] == "task-received" and received["name"] == "task:echo"
        assert received["uuid"] == f"{run.run_id}@1"
        _await_event(seen, lambda e: e.get("uuid") == received["uuid"] and e["type"] == ENDED)
        time.sleep(0.2)
    of_job = [e["type"] for e in seen if e.get("uuid") == received["uuid"]]
    assert of_job == ["task-received", "task-started", ENDED]


def test_a_stopping_worker_sends_the_task_events_it_holds(
    postgres_url: str, redis_url: str, pg_engine: sa.Engine, project: Project, tmp_path: Path
) -> None:
    """Task events wait to go in one batch (here up to 5 s); a worker stopped right after
    its last job still sends that job's outcome."""
    settings = base_settings(
        database_url=postgres_url,
        redis_url=redis_url,
        default_queue=own("runs-stopping"),
        definitions=["workers.examples"],
    )
    service = RunService(
        pg_engine,
        dispatcher=CeleryDispatcher.from_settings(settings),
        events=RedisEventLog.from_url(redis_url, ttl_seconds=60),
        router=Router([], settings.default_queue),
        catalog=DefinitionCatalog(pg_engine, cache_seconds=0),
        max_input_bytes=65536,
    )
    log_path = tmp_path / "worker.log"
    worker = start_worker(
        settings, log_path, concurrency=1, extra_env={"RUNS_WORKER_EVENT_FLUSH_SECONDS": "5"}
    )
    try:
        wait_until_consuming(settings, worker, log_path)
        with _task_events(settings) as seen:
            run, _ = service.create(project, task_request(project))
            wait_terminal(service, project, run.run_id)
            worker.terminate()  # well before the batch is due
            assert worker.wait(timeout=15) == 0
            received = _await_event(seen, lambda e: run.run_id in str(e.get("args")))
            _await_event(seen, lambda e: e.get("uuid") == received["uuid"] and e["type"] == ENDED)
    finally:
        stop_worker(worker)


ENDED = "task-succeeded"


def _await_event(
    seen: list[dict[str, Any]], matches: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [e for e in list(seen) if matches(e)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no such event among {[e.get('type') for e in seen]}")
