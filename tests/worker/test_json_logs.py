"""RUNS_LOG_FORMAT=json: one JSON object per line, and each line about a run names it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from runs.api.app import create_app
from runs.domain.projects import Project
from runs.domain.runs import RunKind, RunRequest, RunStatus
from runs.observability.json_logs import (
    RUN_FIELDS,
    JsonFormatter,
    bind_run_fields,
    reset_run_fields,
)
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import base_settings, stop_worker
from tests.support.api_support import corrupt_event_stream, new_caller
from tests.support.durable_support import Live, live_services
from tests.support.helpers import create_body, task_request
from tests.support.redis_hygiene import own


def record(message: str, **extra: Any) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": message, **extra})
    return made


def test_a_line_carries_the_fields_bound_in_its_context_and_extra_wins() -> None:
    formatter = JsonFormatter()
    token = bind_run_fields(run_id="r1", project_id="p1", target="task:echo", attempt=2)
    try:
        bound = json.loads(formatter.format(record("hello %s", args=("you",), queue="q")))
    finally:
        reset_run_fields(token)
    assert bound["message"] == "hello you" and bound["level"] == "INFO"
    assert {k: bound[k] for k in RUN_FIELDS} == {
        "run_id": "r1",
        "project_id": "p1",
        "target": "task:echo",
        "attempt": 2,
        "queue": "q",
    }
    assert "run_id" not in json.loads(formatter.format(record("after")))


class JsonLines(logging.Handler):
    """Formats each record as it is logged (in the logging call's context)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_an_exception_is_kept_inside_its_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        line = JsonFormatter().format(record("failed", exc_info=sys.exc_info()))
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc_info"]


def test_the_line_of_a_500_names_the_request_its_project_and_its_run(
    postgres_url: str, redis_url: str, pg_engine: sa.Engine
) -> None:
    settings = base_settings(database_url=postgres_url, redis_url=redis_url, auth_cache_seconds=0)
    caller = new_caller(AccessService(pg_engine), "json")
    handler = JsonLines()
    errors = logging.getLogger("runs.api.errors")
    errors.addHandler(handler)
    try:
        with TestClient(create_app(settings)) as client:
            created = client.post("/runs", json=create_body(caller.project), headers=caller.headers)
            run_id = created.json()["run"]["run_id"]
            with corrupt_event_stream(redis_url, caller.project.id, run_id):
                response = client.get(f"/runs/{run_id}/events", headers=caller.headers)
    finally:
        errors.removeHandler(handler)
    assert response.status_code == 500
    [line] = [x for x in handler.lines if x["level"] == "ERROR"]
    assert line["request_id"] == response.json()["request_id"]
    assert (line["project_id"], line["run_id"]) == (caller.project.id, run_id)
    assert "Traceback" in line["exc_info"]


# -- a real worker with RUNS_LOG_FORMAT=json -----------------------------------------------


class JsonWorker:
    def __init__(self, queue: str, stderr: Path, process: subprocess.Popen[bytes]) -> None:
        self.queue, self.stderr, self.process = queue, stderr, process

    def lines(self) -> list[str]:
        return self.stderr.read_text(errors="replace").splitlines()


@pytest.fixture(scope="module")
def json_worker(
    postgres_url: str, redis_url: str, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JsonWorker]:
    """``runs worker`` (a prefork pool) with JSON logs, its stderr kept apart from stdout."""
    queue = own("runs-json")
    folder = tmp_path_factory.mktemp("json-worker")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNS_")},
        "RUNS_DATABASE_URL": postgres_url,
        "RUNS_REDIS_URL": redis_url,
        "RUNS_DEFAULT_QUEUE": queue,
        "RUNS_LOG_FORMAT": "json",
    }
    with (folder / "stdout").open("wb") as out, (folder / "stderr").open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runs.cli",
                "worker",
                "--queues",
                queue,
                "--concurrency",
                "1",
            ],
            cwd=repo_root,
            env=env,
            stdout=out,
            stderr=err,
        )
    worker = JsonWorker(queue, folder / "stderr", process)
    try:
        deadline = time.monotonic() + 60
        while not any(" ready." in line for line in worker.lines()):
            assert process.poll() is None, "\n".join(worker.lines())
            assert time.monotonic() < deadline, "\n".join(worker.lines())
            time.sleep(0.1)
        yield worker
    finally:
        stop_worker(process)


@pytest.fixture(scope="module")
def live(
    json_worker: JsonWorker, postgres_url: str, pg_engine: sa.Engine, event_log: RedisEventLog
) -> Iterator[Live]:
    settings = base_settings(
        database_url=postgres_url,
        redis_url=event_log_url(event_log),
        default_queue=json_worker.queue,
    )
    with live_services(settings, pg_engine, event_log) as services:
        yield services


def event_log_url(event_log: RedisEventLog) -> str:
    kwargs = event_log.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"js-{uuid.uuid4().hex[:12]}")


def lines_about(worker: JsonWorker, run_id: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The worker's log lines (every one of them JSON) about ``run_id``, once Celery has
    logged how its last job ended."""
    deadline = time.monotonic() + timeout
    while True:
        entries = [json.loads(line) for line in worker.lines()]
        about = [e for e in entries if e.get("run_id") == run_id]
        if any(" succeeded in " in e["message"] for e in about) or time.monotonic() > deadline:
            return about
        time.sleep(0.1)


def test_the_lines_a_task_run_logs_in_a_worker_name_its_run_attempt_and_queue(
    json_worker: JsonWorker, live: Live, project: Project
) -> None:
    run, _ = live.runs.create(project, task_request(project))
    assert live.wait_terminal(project, run.run_id).status is RunStatus.COMPLETED
    about = lines_about(json_worker, run.run_id)
    assert about, "no line names the run"
    for entry in about:
        assert {k: entry[k] for k in RUN_FIELDS} == {
            "run_id": run.run_id,
            "project_id": project.id,
            "target": "task:echo",
            "attempt": 1,
            "queue": json_worker.queue,
        }
    assert any(e["logger"].startswith("celery") for e in about)


def test_the_lines_of_a_workflow_run_name_its_steps(
    json_worker: JsonWorker, live: Live, project: Project
) -> None:
    request = RunRequest(
        kind=RunKind.WORKFLOW,
        owner_kind="project",
        owner_id=project.id,
        target="workflow:demo-pipeline",
        workflow_id="demo-pipeline",
    )
    run, _ = live.runs.create(project, request)
    assert live.wait_terminal(project, run.run_id).status is RunStatus.COMPLETED
    about = lines_about(json_worker, run.run_id)
    assert about and all(set(RUN_FIELDS) <= set(e) for e in about)
    assert {e["target"] for e in about} == {"workflow:demo-pipeline"}
    assert {e["queue"] for e in about} == {json_worker.queue}
    assert any("node_id" in e for e in about)
