"""RabbitMQ as the broker: no visibility timeout, so no limit on run length from the broker's
side, and a run that outlasts what a Redis broker would allow is delivered once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from runs.domain.runs import RunKind, RunRequest, RunStatus
from runs.services.access import AccessService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog
from tests.conftest import (
    WorkerPool,
    base_settings,
    delete_queues,
    durable_settings,
    start_worker,
    stop_worker,
    wait_until_consuming,
)
from tests.support.durable_support import live_services

SHORT_VISIBILITY = {"broker_visibility_timeout_seconds": 2, "max_timeout_seconds": 60}


def test_a_redis_broker_refuses_a_visibility_timeout_shorter_than_the_longest_run() -> None:
    with pytest.raises(ValidationError, match="broker_visibility_timeout_seconds"):
        base_settings(redis_url="redis://cache:6379/0", **SHORT_VISIBILITY)
    settings = base_settings(broker_url="amqp://guest:guest@rabbit:5672//", **SHORT_VISIBILITY)
    assert not settings.redis_broker


@pytest.fixture
def short_visibility_pool(
    postgres_url: str, redis_url: str, amqp_url: str, tmp_path: Path
) -> Iterator[WorkerPool]:
    settings = durable_settings(postgres_url, redis_url, broker_url=amqp_url, **SHORT_VISIBILITY)
    log_path = tmp_path / "worker.log"
    env = {k.upper(): str(v) for k, v in SHORT_VISIBILITY.items()}
    process = start_worker(settings, log_path, extra_env={f"RUNS_{k}": v for k, v in env.items()})
    try:
        wait_until_consuming(settings, process, log_path)
        yield WorkerPool(settings=settings, process=process, log_path=log_path)
    finally:
        stop_worker(process)
        delete_queues(amqp_url, settings.default_queue)


def test_a_run_longer_than_a_redis_visibility_timeout_is_delivered_once_on_rabbitmq(
    short_visibility_pool: WorkerPool, pg_engine: sa.Engine, event_log: RedisEventLog
) -> None:
    settings: Settings = short_visibility_pool.settings
    project = AccessService(pg_engine).create_project(f"rabbit-{uuid.uuid4().hex[:12]}")
    with live_services(settings, pg_engine, event_log) as live:
        run, _ = live.runs.create(
            project,
            RunRequest(
                kind=RunKind.TASK,
                owner_kind="project",
                owner_id=project.id,
                target="task:sleep",
                config={"seconds": 5},
            ),
        )
        done = live.wait_terminal(project, run.run_id, timeout=30)
    assert done.status is RunStatus.COMPLETED, done
    assert done.attempt == 1 and len(done.attempts) == 1
    # The worker's log names each delivery of a job: one, though the run outlasted 2 s.
    received = re.findall(r"Task task:sleep\[[^\]]+\] received", short_visibility_pool.log())
    assert len(received) == 1, short_visibility_pool.log()


def test_queue_depth_is_measured_on_rabbitmq(
    postgres_url: str, redis_url: str, amqp_url: str, pg_engine: sa.Engine
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from runs.api.metrics import ApiMetrics
    from runs.domain.runs import RunRef
    from runs.messaging.dispatch import CeleryDispatcher

    idle = f"rabbit-idle-{uuid.uuid4().hex[:8]}"
    settings = base_settings(
        database_url=postgres_url, redis_url=redis_url, broker_url=amqp_url, default_queue=idle
    )
    dispatcher = CeleryDispatcher.from_settings(settings)
    exposition = ApiMetrics.build(settings, pg_engine)
    try:
        for i in range(3):
            dispatcher.dispatch("task:echo", RunRef("p", f"run_{i}"), idle)
        depth = {
            sample.labels["queue"]: sample.value
            for family in text_string_to_metric_families(exposition.render().decode())
            if family.name == "runs_queue_depth"
            for sample in family.samples
        }
        assert depth == {idle: 3}
    finally:
        exposition.close()
        dispatcher.close()
        delete_queues(amqp_url, idle)
