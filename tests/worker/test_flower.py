"""Flower, started with ``runs flower`` against a real worker, shows each target as a task type."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from runs.cli.embedded import free_port
from runs.domain.projects import Project
from runs.domain.runs import RunKind, RunRequest, RunStatus
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import WorkerPool, stop_worker
from tests.support.durable_support import Live, live_services
from tests.support.helpers import task_request
from workers.flower_events import _returned, outcome_event

pytestmark = pytest.mark.worker

USER, PASSWORD = "flower-test", uuid.uuid4().hex
# The line of `runs dev --flower`'s banner that says where Flower is.
FLOWER_LINE = r"Flower: +(?P<url>http://\S+) +\(user (?P<user>\S+), password (?P<password>\S+)\)"


def wait_http(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in 60 s:\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def flower_url(
    worker_pool: WorkerPool, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``runs flower`` on a free port, on the worker pool's broker, with basic auth."""
    settings = worker_pool.settings
    port = free_port(0)
    log_path = tmp_path_factory.mktemp("flower") / "flower.log"
    env = {
        **os.environ,
        "RUNS_DATABASE_URL": settings.database_url,
        "RUNS_REDIS_URL": settings.redis_url,
        "RUNS_DEFAULT_QUEUE": settings.default_queue,
        "RUNS_DEFINITIONS": json.dumps(settings.definitions),
        "RUNS_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}",
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runs.cli", "flower", "--port", str(port)],
            cwd=repo_root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthcheck", process, log_path)
        # What `ps` shows: the command line of Flower's process (runs flower exec'd it).
        command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        assert b"flower" in command_line and PASSWORD.encode() not in command_line
        yield url
    finally:
        stop_worker(process)


@pytest.fixture(scope="module")
def live(worker_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog) -> Iterator[Live]:
    with live_services(worker_pool.settings, pg_engine, event_log) as services:
        yield services


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"fl-{uuid.uuid4().hex[:12]}")


def jobs_of_run(
    url: str, target: str, run_id: str, timeout: float, auth: tuple[str, str] = (USER, PASSWORD)
) -> list[dict[str, Any]]:
    """Flower's tasks of ``target`` whose arguments name ``run_id``: once all have succeeded,
    else what there is after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/api/tasks", params={"taskname": target}, auth=auth, timeout=10)
        response.raise_for_status()
        tasks: dict[str, dict[str, Any]] = response.json()
        jobs = [t for t in tasks.values() if run_id in str(t.get("args"))]
        if succeeded(jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


def succeeded(jobs: list[dict[str, Any]]) -> bool:
    return bool(jobs) and all(j["state"] == "SUCCESS" for j in jobs)


def start_workflow(live: Live, project: Project, workflow_id: str) -> str:
    request = RunRequest(
        kind=RunKind.WORKFLOW,
        owner_kind="project",
        owner_id=project.id,
        target=f"workflow:{workflow_id}",
        workflow_id=workflow_id,
    )
    run, _ = live.runs.create(project, request)
    return run.run_id


def test_flower_refuses_its_api_without_the_basic_auth_credentials(flower_url: str) -> None:
    assert httpx.get(f"{flower_url}/api/tasks", timeout=10).status_code == 401
    wrong = httpx.get(f"{flower_url}/api/tasks", auth=(USER, "wrong"), timeout=10)
    assert wrong.status_code == 401
    assert httpx.get(f"{flower_url}/", timeout=10).status_code == 401


def test_flower_shows_each_target_as_a_task_type_that_succeeded(
    flower_url: str, live: Live, project: Project
) -> None:
    # Flower sees the events sent after its receiver connected: wait for a first run to show.
    deadline = time.monotonic() + 60
    while True:
        warm_up, _ = live.runs.create(project, task_request(project))
        live.wait_terminal(project, warm_up.run_id)
        if succeeded(jobs_of_run(flower_url, "task:echo", warm_up.run_id, timeout=3)):
            break
        assert time.monotonic() < deadline, "Flower saw no run's job within 60 s"

    run, _ = live.runs.create(project, task_request(project))
    workflow_run_id = start_workflow(live, project, "demo-pipeline")
    assert live.wait_terminal(project, run.run_id).status is RunStatus.COMPLETED
    assert live.wait_terminal(project, workflow_run_id).status is RunStatus.COMPLETED

    echo_jobs = jobs_of_run(flower_url, "task:echo", run.run_id, timeout=10)
    assert [(j["name"], j["state"]) for j in echo_jobs] == [("task:echo", "SUCCESS")]
    workflow_jobs = jobs_of_run(flower_url, "workflow:demo-pipeline", workflow_run_id, timeout=10)
    assert workflow_jobs, "Flower shows no job of the workflow run"
    assert {(j["name"], j["state"]) for j in workflow_jobs} == {
        ("workflow:demo-pipeline", "SUCCESS")
    }


def flower_task(url: str, task_id: str, states: set[str], timeout: float = 20) -> dict[str, Any]:
    """Flower's view of the job ``task_id`` once its state is one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/api/task/info/{task_id}", auth=(USER, PASSWORD), timeout=10)
        if response.status_code == 200 and response.json().get("state") in states:
            return dict(response.json())
        assert time.monotonic() < deadline, f"{task_id}: {response.status_code} {response.text}"
        time.sleep(0.2)


def test_flower_shows_how_each_run_ended_under_an_id_that_names_the_run_and_its_attempt(
    flower_url: str, live: Live, project: Project
) -> None:
    """Completed, failed, timed out, cancelled and retried runs, as Flower's API tells them:
    the Celery task id of an attempt's job is ``<run_id>@<attempt>``."""
    deadline = time.monotonic() + 60
    while True:  # Flower sees the events sent after its receiver connected
        warm_up, _ = live.runs.create(project, task_request(project))
        live.wait_terminal(project, warm_up.run_id)
        if succeeded(jobs_of_run(flower_url, "task:echo", warm_up.run_id, timeout=3)):
            break
        assert time.monotonic() < deadline, "Flower saw no run's job within 60 s"

    def submit(target: str, **changes: Any) -> str:
        return live.runs.create(project, task_request(project, target, **changes))[0].run_id

    completed = submit("task:echo")
    failed = submit("task:fail", config={"message": "boom"})
    timed_out = submit("task:sleep", config={"seconds": 30}, timeout_seconds=1)
    cancelled = submit("task:sleep", config={"seconds": 30})
    retried = submit("task:fail", config={"message": "again"}, backoff_limit=1)

    live.wait_running(project, cancelled)
    assert flower_task(flower_url, f"{cancelled}@1", {"STARTED"})["name"] == "task:sleep"
    live.runs.cancel(project, cancelled)
    for run_id in (completed, failed, timed_out, cancelled, retried):
        live.wait_terminal(project, run_id, timeout=60)

    assert flower_task(flower_url, f"{completed}@1", {"SUCCESS"})["args"]
    failure = flower_task(flower_url, f"{failed}@1", {"FAILURE"})
    assert "boom" in failure["exception"]
    assert "timeout" in flower_task(flower_url, f"{timed_out}@1", {"FAILURE"})["exception"]
    flower_task(flower_url, f"{cancelled}@1", {"REVOKED"})
    assert "again" in flower_task(flower_url, f"{retried}@1", {"RETRY"})["exception"]
    assert "again" in flower_task(flower_url, f"{retried}@2", {"FAILURE"})["exception"]

    dashboard = httpx.get(
        f"{flower_url}/", params={"json": 1}, auth=(USER, PASSWORD), timeout=10
    ).json()["data"]
    assert sum(worker.get("task-failed", 0) for worker in dashboard) >= 3
    assert sum(worker.get("task-retried", 0) for worker in dashboard) >= 1


def test_runs_dev_with_flower_prints_where_flower_is_and_flower_shows_the_runs(
    tmp_path: Path, repo_root: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNS_", "FLOWER_"))}
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "runs.cli", "dev", "--flower", "--workers", "1"),
                *("--port", str(free_port(0)), "--redis-port", str(free_port(0))),
                *("--data-dir", str(tmp_path / "data")),
            ],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(repo_root)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while not (found := re.search(FLOWER_LINE, log_path.read_text(errors="replace"))):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        url, auth = found["url"], (found["user"], found["password"])
        wait_http(f"{url}/healthcheck", process, log_path)
        assert httpx.get(f"{url}/api/tasks", timeout=10).status_code == 401
        info = json.loads((tmp_path / "data" / "dev.json").read_text())
        client = httpx.Client(
            base_url=info["api_url"], headers={"Authorization": f"Bearer {info['token']}"}
        )
        body = {
            "kind": "task",
            "owner": {"kind": "project", "id": info["project_id"]},
            "request": {"target": "task:echo", "config": {}},
        }
        deadline = time.monotonic() + 60
        while True:  # Flower sees the jobs that run after its event receiver connected
            run_id = client.post("/runs", json=body).json()["run"]["run_id"]
            if succeeded(jobs_of_run(url, "task:echo", run_id, timeout=5, auth=auth)):
                break
            assert time.monotonic() < deadline, "Flower saw no run's job within 60 s"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log_path.read_text()


@pytest.mark.parametrize(
    ("result", "event", "fields"),
    [
        ("completed", "task-succeeded", {}),
        ("failed: timeout: the attempt timed out after 1 s", "task-failed",
         {"exception": "timeout: the attempt timed out after 1 s", "traceback": ""}),
        ("cancelled: before it started", "task-revoked",
         {"terminated": False, "signum": None, "expired": False}),
        ("dropped: the run was no longer this attempt's", "task-revoked",
         {"terminated": False, "signum": None, "expired": False}),
        ("retrying: boom", "task-retried", {"exception": "boom", "traceback": ""}),
        ("handed back: the worker is shutting down", "task-retried",
         {"exception": "the worker is shutting down", "traceback": ""}),
        ("skipped: not pending", "task-skipped", {"reason": "not pending"}),
        ("advanced", "task-succeeded", {}),
    ],
)  # fmt: skip
def test_a_jobs_result_becomes_the_task_event_that_tells_how_its_run_ended(
    result: str, event: str, fields: dict[str, Any]
) -> None:
    assert outcome_event(result) == (event, fields)
    assert outcome_event(_returned(repr(result))) == (event, fields)  # as Celery hands it over


def test_flower_shows_each_run_of_a_group_as_a_task_of_its_own(
    flower_url: str, live: Live, project: Project
) -> None:
    """Runs created together travel in one job, yet Flower shows each under its own id, as it
    ended; the group's own job is not a task Flower lists."""
    deadline = time.monotonic() + 60
    while True:  # Flower sees the events sent after its receiver connected
        warm_up, _ = live.runs.create(project, task_request(project))
        live.wait_terminal(project, warm_up.run_id)
        if succeeded(jobs_of_run(flower_url, "task:echo", warm_up.run_id, timeout=3)):
            break
        assert time.monotonic() < deadline, "Flower saw no run's job within 60 s"
    answers = live.runs.create_many(
        [(project, task_request(project)) for _ in range(3)]
        + [(project, task_request(project, "task:fail", config={"message": "m"})) for _ in range(3)]
    )
    made = [answer[0] for answer in answers if not isinstance(answer, Exception)]
    for run in made:
        live.wait_terminal(project, run.run_id)
    for run in made[:3]:
        task = flower_task(flower_url, f"{run.run_id}@1", {"SUCCESS"})
        assert task["name"] == "task:echo" and run.run_id in task["args"]
    for run in made[3:]:
        assert "m" in flower_task(flower_url, f"{run.run_id}@1", {"FAILURE"})["exception"]
    tasks = httpx.get(f"{flower_url}/api/tasks", auth=(USER, PASSWORD), timeout=10).json()
    assert not [task_id for task_id in tasks if task_id.startswith("group-")]
