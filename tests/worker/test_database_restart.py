"""PostgreSQL restarts under a real system (a private cluster, so nothing else is disturbed):
runs finishing at that moment keep their result, and the API answers 503 while the database is
down and 202 again at once after it is back, never 500."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runs.domain.definitions import Definition
from runs.domain.runs import RunKind, RunRequest, RunStatus
from runs.persistence import migrate
from runs.persistence.engine import create_engine
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.streams.event_log import RedisEventLog
from tests.conftest import (
    DURABLE_ENV,
    durable_settings,
    note_projects,
    start_worker,
    stop_worker,
    unavailable,
    wait_until_consuming,
)
from tests.support.durable_support import live_services
from tests.support.private_servers import PrivatePostgres, postgres_tools_missing
from tests.support.redis_hygiene import own
from tests.support.server_support import serving

pytestmark = pytest.mark.worker

JOURNALED = "task:durable/journaled"


@pytest.fixture
def private_postgres() -> Iterator[tuple[PrivatePostgres, str]]:
    missing = postgres_tools_missing()
    if missing:
        unavailable(missing)
    cluster = PrivatePostgres()
    cluster.start()
    url = cluster.create_database("runs")
    migrate.upgrade(url)
    try:
        yield cluster, url
    finally:
        note_projects(url)  # their event keys in the shared Redis go at the session's end
        cluster.destroy()


def journal_lines(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    return [
        (what, unit, int(attempt))
        for what, unit, attempt, _ in (line.split() for line in path.read_text().splitlines())
    ]


def test_runs_finishing_while_postgresql_restarts_complete_once_with_their_output(
    private_postgres: tuple[PrivatePostgres, str],
    redis_url: str,
    event_log: RedisEventLog,
    tmp_path: Path,
) -> None:
    cluster, url = private_postgres
    settings = durable_settings(url, redis_url, default_queue=own("runs-pg-restart"))
    journal = tmp_path / "journal"
    # A lease long enough that a restart never outlasts it: a finished attempt must be
    # recorded as finished, not reclaimed.
    env = {**DURABLE_ENV, "RUNS_WORKER_LEASE_SECONDS": "10", "RUNS_FINISH_RETRY_SECONDS": "30"}
    worker = start_worker(settings, tmp_path / "worker.log", concurrency=2, extra_env=env)
    engine = create_engine(url)
    try:
        wait_until_consuming(settings, worker, tmp_path / "worker.log")
        project = AccessService(engine).create_project(f"r-{uuid.uuid4().hex[:10]}")
        with live_services(settings, engine, event_log) as live:
            created = []
            for i in range(40):
                request = RunRequest(
                    kind=RunKind.TASK,
                    owner_kind="project",
                    owner_id=project.id,
                    target=JOURNALED,
                    config={"seconds": 0.05 + (i % 5) * 0.05, "journal": str(journal)},
                )
                created.append(live.runs.create(project, request)[0])
            # Restart twice while attempts finish, once fast and once immediate.
            for mode in ("fast", "immediate"):
                time.sleep(0.4)
                cluster.restart(mode)  # type: ignore[arg-type]
            ended = [live.wait_terminal(project, run.run_id, timeout=60) for run in created]
            for run in ended:
                assert run.status is RunStatus.COMPLETED, (run, worker_log(tmp_path))
                assert run.output == {"worked": run.config["seconds"], "run_id": run.run_id}
                assert run.attempt == 1, run
                ids = [
                    e.event_id
                    for e in live.runs.events(project, run.run_id, after=0, limit=99).items
                ]
                assert ids == list(range(1, len(ids) + 1)), (run.run_id, ids)
        lines = journal_lines(journal)
        for run in ended:
            mine = [what for what, unit, _ in lines if unit == run.run_id]
            assert mine == ["start", "end"], (run.run_id, mine)
        log = worker_log(tmp_path)
        assert "no longer this attempt's" not in log
    finally:
        stop_worker(worker)
        engine.dispose()


def worker_log(tmp_path: Path) -> str:
    return (tmp_path / "worker.log").read_text(errors="replace")[-8000:]


def test_the_api_answers_503_while_the_database_is_down_and_202_as_soon_as_it_is_back(
    private_postgres: tuple[PrivatePostgres, str],
    redis_url: str,
    tmp_path: Path,
    repo_root: Path,
) -> None:
    cluster, url = private_postgres
    engine = create_engine(url)
    access = AccessService(engine)
    project = access.create_project(f"a-{uuid.uuid4().hex[:10]}")
    _, token = access.create_token(project.slug, name="t")
    DefinitionCatalog(engine, cache_seconds=0).register(
        [Definition(target="task:echo", kind="task")]
    )
    engine.dispose()
    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "kind": "task",
        "owner": {"kind": "project", "id": project.id},
        "request": {"target": "task:echo", "config": {"n": 1}},
    }
    with (
        serving(url, redis_url, tmp_path, repo_root) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=30) as client,
    ):
        assert client.post("/runs", json=body).status_code == 202  # the pool holds connections

        cluster.stop("fast")
        down = client.post(
            "/runs", json={**body, "request": {**body["request"], "public_id": "run_while_down"}}
        )
        assert down.status_code == 503, down.text
        assert down.headers["content-type"].startswith("application/problem+json")
        assert int(down.headers["retry-after"]) >= 1
        assert "try again" in down.json()["detail"]

        cluster.start()
        # Every pooled connection died with the server: the first requests after it is back
        # get new ones, not a 500.
        answers = [client.post("/runs", json=body).status_code for _ in range(5)]
        assert answers == [202] * 5, server.log()[-4000:]
        listed = client.get(f"/projects/{project.slug}/runs", params={"limit": 100})
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["data"]) == 6  # nothing of the refused create was written
        assert client.get("/runs/run_while_down").status_code == 404
        assert "unhandled error" not in server.log()
