"""Real workers with the event log on a Redis Cluster (RUNS_REDIS_CLUSTER=true; Celery's broker
stays the single Redis): runs that travel together close and publish across nodes in one call,
cancel flags on several nodes stop their runs, and a drained worker hands its run back."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from redis.cluster import RedisCluster

from runs.domain.events import RUN_FINISHED, RUN_STARTED
from runs.domain.projects import Project
from runs.domain.runs import Run, RunRef, RunStatus
from runs.services.access import AccessService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog, stream_key
from tests.conftest import (
    DURABLE_ENV,
    base_settings,
    start_worker,
    stop_worker,
    wait_until_consuming,
)
from tests.support.durable_support import Live, live_services
from tests.support.helpers import task_request
from tests.support.redis_cluster import PrivateRedisCluster
from tests.support.redis_hygiene import own

pytestmark = pytest.mark.worker

# A lease far longer than the tests (a run that comes back quickly did not wait for it), a
# short drain, and the event log on the cluster.
CLUSTER_ENV = {
    **DURABLE_ENV,
    "RUNS_REDIS_CLUSTER": "true",
    "RUNS_WORKER_DRAIN_SECONDS": "0.5",
    "RUNS_WORKER_LEASE_SECONDS": "60",
}


def cluster_settings(postgres_url: str, redis_url: str, cluster: PrivateRedisCluster) -> Settings:
    return base_settings(
        database_url=postgres_url,
        redis_url=cluster.url,
        redis_cluster=True,
        broker_url=redis_url,
        default_queue=own("runs-cluster"),
        definitions=["workers.examples", "tests.support.definitions"],
    )


@pytest.fixture(scope="module")
def nodes(redis_cluster: PrivateRedisCluster) -> Iterator[RedisCluster]:
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def cluster_log(redis_cluster: PrivateRedisCluster) -> Iterator[RedisEventLog]:
    log = RedisEventLog.from_url(redis_cluster.url, ttl_seconds=3600, cluster=True)
    yield log
    log.client.close()


@pytest.fixture(scope="module")
def settings(postgres_url: str, redis_url: str, redis_cluster: PrivateRedisCluster) -> Settings:
    return cluster_settings(postgres_url, redis_url, redis_cluster)


@pytest.fixture(scope="module")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One prefork worker (2 processes) on the cluster; its log's path."""
    log_path = tmp_path_factory.mktemp("cluster-worker") / "worker.log"
    process = start_worker(settings, log_path, extra_env=CLUSTER_ENV)
    try:
        wait_until_consuming(settings, process, log_path)
        yield log_path
    finally:
        stop_worker(process)


@pytest.fixture(scope="module")
def live(settings: Settings, pg_engine: sa.Engine, cluster_log: RedisEventLog) -> Iterator[Live]:
    with live_services(settings, pg_engine, cluster_log) as services:
        yield services


@pytest.fixture
def project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"c-{uuid.uuid4().hex[:12]}")


def run_ids_on_every_node(nodes: RedisCluster, project: Project, per_node: int) -> list[str]:
    """Run ids of ``project`` whose keys are on every primary, ``per_node`` on each."""
    found: dict[str, list[str]] = {str(n.name): [] for n in nodes.get_primaries()}
    while any(len(ids) < per_node for ids in found.values()):
        run_id = f"run_{uuid.uuid4()}"
        on = found[str(nodes.get_node_from_key(stream_key(RunRef(project.id, run_id))).name)]
        if len(on) < per_node:
            on.append(run_id)
    return [run_id for ids in found.values() for run_id in ids]


def assert_whole(live: Live, project: Project, run: Run) -> list[str]:
    """The run's events: ids 1..n, opened first and finished last; their types."""
    events = live.runs.events(project, run.run_id, after=0, limit=200).items
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert events[0].event_type == RUN_STARTED
    return [e.event_type for e in events]


def test_runs_created_together_end_together_across_the_nodes(
    worker: Path, live: Live, project: Project, nodes: RedisCluster, settings: Settings
) -> None:
    run_ids = run_ids_on_every_node(nodes, project, per_node=4)
    requests = [
        (project, task_request(project, "task:sleep", config={"seconds": 0.001}, public_id=run_id))
        for run_id in run_ids
    ]
    made = [a[0] for a in live.runs.create_many(requests) if not isinstance(a, Exception)]
    assert len(made) == len(run_ids)
    for run in made:
        ended = live.wait_terminal(project, run.run_id)
        assert ended.status is RunStatus.COMPLETED and ended.attempt == 1, ended
        assert assert_whole(live, project, ended)[-1] == RUN_FINISHED
        key = stream_key(ended.ref)
        assert nodes.xrevrange(key, count=1)[0][1][b"t"] == RUN_FINISHED.encode()
        assert 0 < nodes.ttl(key) <= settings.stream_ttl_seconds  # published: it expires
    assert "group-" in worker.read_text(errors="replace")  # they travelled as a group


def test_cancel_flags_on_two_nodes_stop_their_runs(
    worker: Path, live: Live, project: Project, nodes: RedisCluster
) -> None:
    run_ids = run_ids_on_every_node(nodes, project, per_node=1)[:2]
    runs = []
    for run_id in run_ids:  # one job each: both pool processes run one
        request = task_request(project, "task:sleep", config={"seconds": 60}, public_id=run_id)
        runs.append(live.runs.create(project, request)[0])
    for run in runs:
        live.wait_running(project, run.run_id, timeout=20)
    for run in runs:
        assert live.runs.cancel(project, run.run_id)[0]
    for run in runs:
        ended = live.wait_for(
            project, run.run_id, lambda r: r.cancel_stopped_at is not None, timeout=20
        )
        assert ended.status is RunStatus.CANCELLED
        stopped_after = (ended.cancel_stopped_at - ended.cancel_requested_at).total_seconds()  # type: ignore[operator]
        assert stopped_after < 5, "the cooperative flag, not the hard stop, ended it"
        assert assert_whole(live, project, ended)[-1] == "RUN_ERROR"


def test_a_drained_worker_hands_its_run_back_and_the_next_one_finishes_it(
    postgres_url: str,
    redis_url: str,
    redis_cluster: PrivateRedisCluster,
    pg_engine: sa.Engine,
    cluster_log: RedisEventLog,
    project: Project,
    tmp_path: Path,
) -> None:
    settings = cluster_settings(postgres_url, redis_url, redis_cluster)  # a queue of its own
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker-{len(started) + 1}.log"
        process = start_worker(settings, log_path, extra_env=CLUSTER_ENV)
        started.append(process)
        wait_until_consuming(settings, process, log_path)
        return process

    with live_services(settings, pg_engine, cluster_log) as live:
        try:
            first = start()
            request = task_request(project, "task:sleep", config={"seconds": 3}, backoff_limit=0)
            run, _ = live.runs.create(project, request)
            live.wait_running(project, run.run_id, timeout=20)
            first.terminate()  # SIGTERM, as a deploy sends it: the worker drains
            assert first.wait(timeout=30) == 0
            back = live.runs.get(project, run.run_id)
            assert back.status is RunStatus.PENDING and back.attempt == 0
            events = live.runs.events(project, run.run_id, after=0, limit=50).items
            steps = [e.payload for e in events]
            assert steps[-1]["status"] == "handed_back", steps
            start()
            done = live.wait_terminal(project, run.run_id, timeout=30)
            assert done.status is RunStatus.COMPLETED and done.attempt == 1
            types = assert_whole(live, project, done)
            assert types.count(RUN_STARTED) == 1 and types[-1] == RUN_FINISHED
        finally:
            for process in started:
                stop_worker(process)
