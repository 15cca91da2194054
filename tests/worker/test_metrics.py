"""Prometheus metrics of real processes: a `runs api`, a `runs worker --metrics-port` (prefork,
two processes) and a `runs scheduler --metrics-port`, each scraped and parsed with
prometheus-client's own parser; counters compared with the runs made, exactly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from runs.cli.embedded import free_port
from runs.domain.clock import utcnow
from runs.domain.definitions import Definition
from runs.domain.runs import RunStatus
from runs.messaging.routing import Router
from runs.observability import metrics
from runs.persistence.engine import create_engine
from runs.persistence.records import active_counts
from runs.persistence.tables import runs as runs_table
from runs.persistence.tables import schedule_firings
from runs.persistence.tables import schedules as schedules_table
from runs.scheduling.catalogue import ScheduleService
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.services.runs import RunService
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from tests.support.api_support import Caller, new_caller
from tests.support.helpers import create_body, task_request
from tests.support.server_support import Server, start_server, stop_server

pytestmark = pytest.mark.worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a scrape, parsed by prometheus-client's text parser."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def child_env(postgres_url: str, redis_url: str, **settings: str) -> dict[str, str]:
    """The environment of a process of ours: no RUNS_* or multiprocess directory inherited."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RUNS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    return {
        **inherited,
        "RUNS_DATABASE_URL": postgres_url,
        "RUNS_REDIS_URL": redis_url,
        **{f"RUNS_{k.upper()}": v for k, v in settings.items()},
    }


def queue_keys(queue: str) -> list[str]:
    """A queue's list and the keys kombu binds it with."""
    return [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]


def wait_for_metrics(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log_path.read_text(errors="replace")
        assert time.monotonic() < deadline, log_path.read_text(errors="replace")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the processes ---------------------------------------------------------------------------


class Stack:
    def __init__(self, api: Server, queue: str, idle_queue: str, worker_port: int) -> None:
        self.api = api
        self.queue = queue
        self.idle_queue = idle_queue
        self.worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"

    @property
    def api_metrics(self) -> str:
        return f"{self.api.url}/metrics"


@pytest.fixture(scope="module")
def stack(
    postgres_url: str,
    redis_url: str,
    pg_engine: sa.Engine,
    tmp_path_factory: pytest.TempPathFactory,
    repo_root: Path,
) -> Iterator[Stack]:
    """A `runs api` and a `runs worker --metrics-port` (prefork, concurrency 2) on a queue of
    their own; task:fail goes to a queue nothing consumes. The worker never sweeps here: its
    sweeper would act on other tests' runs in the shared database."""
    tmp = tmp_path_factory.mktemp("metrics")
    queue, idle_queue = f"metrics-{uuid.uuid4().hex[:8]}", f"metrics-idle-{uuid.uuid4().hex[:8]}"
    api = start_server(
        postgres_url,
        redis_url,
        tmp,
        repo_root,
        RUNS_DEFAULT_QUEUE=queue,
        RUNS_ROUTES=json.dumps({"task:fail": idle_queue}),
        RUNS_METRICS_CACHE_SECONDS="0",
    )
    port = free_port(0)
    log_path = tmp / "worker.log"
    env = child_env(
        postgres_url,
        redis_url,
        default_queue=queue,
        definitions=json.dumps(["workers.examples", "tests.support.definitions"]),
        worker_metrics_dir=str(tmp / "worker-metrics"),
        sweep_interval_seconds="3600",
    )
    argv = [sys.executable, "-m", "runs.cli", "worker", "--queues", queue]
    argv += ["--concurrency", "2", "--metrics-port", str(port)]
    argv += ["--hostname", f"metrics-{uuid.uuid4().hex[:6]}@%h"]
    with log_path.open("ab") as log:
        worker = subprocess.Popen(
            argv, cwd=repo_root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    broker = redis.Redis.from_url(redis_url)
    try:
        wait_for_metrics(worker, f"http://127.0.0.1:{port}/metrics", log_path)
        yield Stack(api, queue, idle_queue, port)
    finally:
        stop(worker)
        stop_server(api)
        broker.delete(*queue_keys(queue), *queue_keys(idle_queue))
        broker.close()


@pytest.fixture(scope="module")
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "metrics")


def create(stack: Stack, caller: Caller, target: str, **config: object) -> str:
    body = create_body(caller.project, target)
    body["request"]["config"] = config
    created = httpx.post(f"{stack.api.url}/runs", json=body, headers=caller.headers, timeout=10)
    assert created.status_code == 202, created.text
    run_id: str = created.json()["run"]["run_id"]
    return run_id


def wait_ended(stack: Stack, caller: Caller, run_ids: list[str]) -> None:
    deadline = time.monotonic() + 60
    for run_id in run_ids:
        while True:
            got = httpx.get(f"{stack.api.url}/runs/{run_id}", headers=caller.headers, timeout=10)
            if got.json()["status"] in ("completed", "failed", "cancelled"):
                assert got.json()["status"] == "completed", got.text
                break
            assert time.monotonic() < deadline, got.text
            time.sleep(0.05)


def events_of(stack: Stack, caller: Caller, run_id: str) -> int:
    url = f"{stack.api.url}/runs/{run_id}/events?after_event_id=0&limit=100"
    got = httpx.get(url, headers=caller.headers, timeout=10)
    assert got.status_code == 200, got.text
    return len(got.json()["data"])


# -- the tests ---------------------------------------------------------------------------------


def test_counters_of_the_api_and_the_worker_move_by_exactly_the_runs_made(
    stack: Stack, caller: Caller
) -> None:
    made = 7
    api_before, worker_before = scrape(stack.api_metrics), scrape(stack.worker_metrics)
    run_ids = [create(stack, caller, "task:echo", n=n) for n in range(made)]
    wait_ended(stack, caller, run_ids)
    api_after, worker_after = scrape(stack.api_metrics), scrape(stack.worker_metrics)

    task_echo = {"target": "task:echo"}
    assert moved(api_before, api_after, "runs_created_total", kind="task", **task_echo) == made
    # The API made them and the worker finished them: neither counts the other's part.
    assert moved(worker_before, worker_after, "runs_created_total", kind="task", **task_echo) == 0
    finished = {"kind": "task", "status": "completed", **task_echo}
    assert moved(worker_before, worker_after, "runs_finished_total", **finished) == made
    assert moved(api_before, api_after, "runs_finished_total", **finished) == 0
    for histogram in ("runs_run_duration_seconds_count", "runs_queue_wait_seconds_count"):
        assert moved(worker_before, worker_after, histogram, **task_echo) == made, histogram
    inf_bucket = {"le": "+Inf", **task_echo}
    assert (
        moved(worker_before, worker_after, "runs_queue_wait_seconds_bucket", **inf_bucket) == made
    )
    events = sum(events_of(stack, caller, run_id) for run_id in run_ids)
    assert events >= 3 * made
    assert moved(worker_before, worker_after, "runs_events_appended_total") == events
    assert value(api_after, "runs_queue_depth", queue=stack.queue) == 0


def test_a_worker_pool_sums_the_values_of_its_two_processes(
    stack: Stack, caller: Caller, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two runs that sleep at once take both pool processes; the main process answers for
    both, and each wrote its own file (prometheus-client's multiprocess mode)."""
    before = scrape(stack.worker_metrics)
    run_ids = [create(stack, caller, "task:sleep", seconds=0.5) for _ in range(2)]
    wait_ended(stack, caller, run_ids)
    after = scrape(stack.worker_metrics)
    finished = {"target": "task:sleep", "kind": "task", "status": "completed"}
    assert moved(before, after, "runs_finished_total", **finished) == 2
    assert moved(before, after, "runs_run_duration_seconds_count", target="task:sleep") == 2
    # Both runs slept 0.5 s: the summed durations say both were counted.
    assert moved(before, after, "runs_run_duration_seconds_sum", target="task:sleep") >= 1.0
    directory = next(tmp_path_factory.getbasetemp().glob("metrics*/worker-metrics"))
    writers = {path.stem.rsplit("_", 1)[1] for path in directory.glob("histogram_*.db")}
    assert len(writers) >= 2, sorted(p.name for p in directory.iterdir())


def test_http_requests_are_counted_by_route_template_and_status(
    stack: Stack, caller: Caller
) -> None:
    run_id = create(stack, caller, "task:echo")
    before = scrape(stack.api_metrics)
    for _ in range(3):
        got = httpx.get(f"{stack.api.url}/runs/{run_id}", headers=caller.headers, timeout=10)
        assert got.status_code == 200
    missing = httpx.get(f"{stack.api.url}/runs/{run_id}-gone", headers=caller.headers, timeout=10)
    assert missing.status_code == 404
    assert httpx.get(f"{stack.api.url}/no/such/path", timeout=10).status_code == 404
    after = scrape(stack.api_metrics)

    route = {"method": "GET", "route": "/runs/{run_id}"}
    assert moved(before, after, "runs_http_requests_total", status="200", **route) == 3
    assert moved(before, after, "runs_http_requests_total", status="404", **route) == 1
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert moved(before, after, "runs_http_requests_total", **unmatched) == 1
    assert moved(before, after, "runs_http_request_duration_seconds_count", **route) == 4
    # The scrape before this one is counted too, under its own route.
    scraped = {"method": "GET", "route": "/metrics", "status": "200"}
    assert moved(before, after, "runs_http_requests_total", **scraped) == 1
    labels = {v for (_, pairs) in after for _, v in pairs}
    assert not any(run_id in label for label in labels)


def test_queue_depth_and_pending_runs_count_the_jobs_nobody_took(
    stack: Stack, caller: Caller
) -> None:
    before = scrape(stack.api_metrics)
    run_ids = [create(stack, caller, "task:fail") for _ in range(3)]
    after = scrape(stack.api_metrics)
    try:
        assert value(after, "runs_queue_depth", queue=stack.idle_queue) == 3
        assert value(after, "runs_queue_depth", queue=stack.queue) == 0
        assert value(after, "runs_by_status", status="pending") >= 3
        assert moved(before, after, "runs_created_total", target="task:fail", kind="task") == 3
    finally:
        for run_id in run_ids:
            url = f"{stack.api.url}/runs/{run_id}/cancel"
            assert httpx.post(url, headers=caller.headers, timeout=10).status_code == 200
    cancelled = scrape(stack.api_metrics)
    labels = {"target": "task:fail", "kind": "task", "status": "cancelled"}
    assert moved(after, cancelled, "runs_finished_total", **labels) == 3


# -- runs per status, from partial indexes -----------------------------------------------------


def test_runs_per_active_status_are_counted_exactly(
    sqlite_url: str, event_log: RedisEventLog
) -> None:
    """On a database no worker touches: pending, running and waiting runs, and none of the
    ended ones."""
    engine = create_engine(sqlite_url)
    try:
        DefinitionCatalog(engine, cache_seconds=0).register(
            [Definition(target="task:echo", kind="task")]
        )
        service = _service(engine, event_log)
        project = AccessService(engine).create_project(f"counts-{uuid.uuid4().hex[:8]}")
        with engine.connect() as conn:
            before = active_counts(conn)
        made = [service.create(project, task_request(project))[0] for _ in range(5)]
        with engine.begin() as conn:
            states = ["running", "running", "waiting", "completed"]
            for run, status in zip(made, states, strict=False):
                conn.execute(
                    runs_table.update()
                    .where(runs_table.c.project_id == project.id)
                    .where(runs_table.c.run_id == run.run_id)
                    .values(
                        status=status,
                        lease_expires_at=None if status == "completed" else utcnow(),
                    )
                )
            after = active_counts(conn)
        moves = {status: after[status] - before[status] for status in after}
        assert moves == {RunStatus.PENDING: 1, RunStatus.RUNNING: 2, RunStatus.WAITING: 1}
    finally:
        engine.dispose()


def test_runs_per_active_status_read_partial_indexes_not_the_table(pg_engine: sa.Engine) -> None:
    """On PostgreSQL the count can be answered from ix_runs_pending and ix_runs_leased, which
    hold only active runs: its cost follows the active runs, not the table's size."""
    from runs.persistence.records import _COUNTS

    with pg_engine.connect() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        compiled = _COUNTS.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in conn.execute(sa.text(f"EXPLAIN {compiled}")))
    assert "ix_runs_pending" in plan, plan
    assert "ix_runs_leased" in plan, plan
    assert "Seq Scan" not in plan, plan


# -- the scheduler ---------------------------------------------------------------------------------


def test_a_scheduler_serves_what_it_created(
    postgres_url: str,
    redis_url: str,
    pg_engine: sa.Engine,
    event_log: RedisEventLog,
    tmp_path: Path,
    repo_root: Path,
) -> None:
    target = f"task:metrics/scheduled-{uuid.uuid4().hex[:6]}"
    idle_queue = f"metrics-scheduled-{uuid.uuid4().hex[:8]}"
    DefinitionCatalog(pg_engine, cache_seconds=0).register([Definition(target=target, kind="task")])
    project = AccessService(pg_engine).create_project(f"sched-metrics-{uuid.uuid4().hex[:8]}")
    schedules = ScheduleService(pg_engine, runs=_service(pg_engine, event_log))
    port = free_port(0)
    log_path = tmp_path / "scheduler.log"
    env = child_env(
        postgres_url,
        redis_url,
        default_queue=idle_queue,
        scheduler_poll_seconds="0.2",
        metrics_host="127.0.0.1",
    )
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runs.cli", "scheduler", "--metrics-port", str(port)],
            cwd=repo_root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/metrics"
    schedule_id: str | None = None
    try:
        wait_for_metrics(process, url, log_path)
        before = scrape(url)
        run_at = utcnow() + timedelta(seconds=1)
        schedule_id = schedules.create(
            project,
            {"name": "once", "target": {"kind": "task", "id": target[5:]}, "run_at": run_at},
        ).id
        deadline = time.monotonic() + 30
        while moved(before, scrape(url), "runs_created_total", target=target, kind="task") < 1:
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.2)
        time.sleep(0.5)  # a second run would have been created by now
        assert moved(before, scrape(url), "runs_created_total", target=target, kind="task") == 1
    finally:
        stop(process)
        with pg_engine.begin() as conn:
            if schedule_id is not None:
                conn.execute(
                    schedule_firings.delete().where(schedule_firings.c.schedule_id == schedule_id)
                )
                conn.execute(runs_table.delete().where(runs_table.c.schedule_id == schedule_id))
                conn.execute(schedules_table.delete().where(schedules_table.c.id == schedule_id))
        event_log.client.delete(*queue_keys(idle_queue))


def _service(engine: sa.Engine, event_log: RedisEventLog) -> RunService:
    return RunService(
        engine,
        dispatcher=RecordingDispatcher(sent=[]),
        events=event_log,
        router=Router([], "metrics-unused"),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
    )


# -- the examples in config/ -------------------------------------------------------------------


def test_the_dashboard_charts_only_metrics_that_are_exported(repo_root: Path) -> None:
    exported = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    exported |= {"runs_by_status", "runs_queue_depth"}
    dashboard = json.loads((repo_root / "config" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for query in queries
        for name in re.findall(r"\bruns_[a-z_]+", query)
    }
    assert used == exported, used ^ exported
    scrape_config = yaml.safe_load((repo_root / "config" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape_config["scrape_configs"]}
    assert jobs == {"runs-api", "runs-worker", "runs-scheduler"}
