"""Runs left pending (the broker was down when they were accepted) are sent again."""

from __future__ import annotations

import time
import uuid
from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.domain.projects import Project
from runs.domain.runs import RunStatus
from runs.domain.workflows import NodeStatus
from runs.messaging.routing import Router
from runs.persistence import nodes
from runs.services.access import AccessService
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.recovery import RecoveryService
from runs.services.runs import RunService
from runs.streams.event_log import RedisEventLog
from runs.testing import RecordingDispatcher
from runs.wiring import Wired, wire
from tests.conftest import base_settings, start_worker, stop_worker, wait_until_consuming
from tests.support.helpers import task_request
from tests.support.redis_hygiene import QUEUE, own
from workers.definitions.registry import Registry
from workers.sweeper import Sweeper


def service_at(
    engine: sa.Engine,
    events: RedisEventLog,
    dispatcher: RecordingDispatcher,
    ahead: float,
    queue: str = QUEUE,
) -> RunService:
    return RunService(
        engine,
        dispatcher=dispatcher,
        events=events,
        router=Router([], queue),
        catalog=DefinitionCatalog(engine, cache_seconds=0),
        max_input_bytes=4096,
        clock=lambda: utcnow() + timedelta(seconds=ahead),
    )


def attempts_ahead(
    engine: sa.Engine, events: RedisEventLog, dispatcher: RecordingDispatcher, ahead: float
) -> AttemptService:
    return AttemptService(
        engine,
        dispatcher=dispatcher,
        events=events,
        clock=lambda: utcnow() + timedelta(seconds=ahead),
    )


def sweeper_ahead(
    engine: sa.Engine, events: RedisEventLog, dispatcher: RecordingDispatcher, ahead: float
) -> RecoveryService:
    return RecoveryService(
        engine,
        attempts=attempts_ahead(engine, events, dispatcher, ahead),
        dispatcher=dispatcher,
        events=events,
        clock=lambda: utcnow() + timedelta(seconds=ahead),
    )


def sweep_nodes_twice_later(engine: sa.Engine, event_log: RedisEventLog) -> list[tuple[str, str]]:
    """Two sweepers, 120 s from now, re-send stale workflow nodes; what both sent."""
    sent: list[tuple[str, str]] = []
    for _ in range(2):
        dispatcher = RecordingDispatcher(sent=[])
        sweeper = sweeper_ahead(engine, event_log, dispatcher, 120)
        sweeper.redispatch_stale_steps(older_than_seconds=60, limit=100_000)
        sent.extend(dispatcher.nodes_sent)
    return sent


def test_a_run_pending_too_long_is_sent_again_exactly_once_by_racing_sweepers(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    down = RecordingDispatcher(sent=[], fail=True)
    run, _ = service_at(engine, event_log, down, 0).create(project, task_request(project))
    first, second = RecordingDispatcher(sent=[]), RecordingDispatcher(sent=[])
    later_a = sweeper_ahead(engine, event_log, first, 120)
    later_b = sweeper_ahead(engine, event_log, second, 120)
    later_a.redispatch_stale(older_than_seconds=60, limit=100_000)
    later_b.redispatch_stale(older_than_seconds=60, limit=100_000)
    sent = [s for s in first.sent + second.sent if s[1] == run.ref]
    assert sent == [("task:echo", run.ref, QUEUE)]


def test_a_recent_or_started_run_is_not_sent_again(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    recorder = RecordingDispatcher(sent=[])
    now_service = service_at(engine, event_log, recorder, 0)
    fresh, _ = now_service.create(project, task_request(project))
    started, _ = now_service.create(project, task_request(project))
    now_worker = attempts_ahead(engine, event_log, recorder, 0)
    assert now_worker.claim(started.ref, owner="w", lease_seconds=30) is not None
    recorder.sent.clear()
    sweeper_ahead(engine, event_log, recorder, 0).redispatch_stale(
        older_than_seconds=60, limit=100_000
    )
    later = RecordingDispatcher(sent=[])
    sweeper_ahead(engine, event_log, later, 120).redispatch_stale(
        older_than_seconds=60, limit=100_000
    )
    assert fresh.ref not in {s[1] for s in recorder.sent}
    assert started.ref not in {s[1] for s in later.sent}


@pytest.mark.worker
def test_a_run_accepted_while_the_broker_was_down_completes_once_a_worker_sweeps(
    postgres_url: str,
    redis_url: str,
    pg_engine: sa.Engine,
    event_log: RedisEventLog,
    tmp_path: Path,
) -> None:
    settings = base_settings(
        database_url=postgres_url,
        redis_url=redis_url,
        default_queue=own("runs-sweep"),
    )
    log_path = tmp_path / "worker.log"
    worker = start_worker(
        settings,
        log_path,
        concurrency=1,
        extra_env={"RUNS_PENDING_REDISPATCH_SECONDS": "1", "RUNS_SWEEP_INTERVAL_SECONDS": "0.3"},
    )
    try:
        wait_until_consuming(settings, worker, log_path)
        project: Project = AccessService(pg_engine).create_project(f"s-{uuid.uuid4().hex[:10]}")
        down = RecordingDispatcher(sent=[], fail=True)
        service = service_at(pg_engine, event_log, down, 0, queue=settings.default_queue)
        run, _ = service.create(project, task_request(project))
        assert service.get(project, run.run_id).status is RunStatus.PENDING
        deadline = time.monotonic() + 20
        while (current := service.get(project, run.run_id)).status is not RunStatus.COMPLETED:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        assert current.attempt == 1 and current.output == {"hello": "world"}
    finally:
        stop_worker(worker)


def test_a_workflow_step_left_queued_is_sent_again_once(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    recorder = RecordingDispatcher(sent=[])
    runs = service_at(engine, event_log, recorder, 0)
    run, _ = runs.create(project, task_request(project))
    worker = attempts_ahead(engine, event_log, recorder, 0)
    assert worker.claim(run.ref, owner="w", lease_seconds=30) is not None
    now = utcnow()
    with engine.begin() as conn:
        nodes.insert_nodes(conn, run.ref, ["a", "b"], now)
        nodes.transition(
            conn, run.ref, "a", [NodeStatus.PENDING], {"status": "queued", "updated_at": now}
        )
    sent = [s for s in sweep_nodes_twice_later(engine, event_log) if s[0] == run.ref]
    assert sent == [(run.ref, "a")]


def test_a_workflow_step_whose_worker_lease_ran_out_is_sent_again_once(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    recorder = RecordingDispatcher(sent=[])
    runs = service_at(engine, event_log, recorder, 0)
    run, _ = runs.create(project, task_request(project))
    worker = attempts_ahead(engine, event_log, recorder, 0)
    assert worker.claim(run.ref, owner="w", lease_seconds=30) is not None
    now = utcnow()
    with engine.begin() as conn:
        nodes.insert_nodes(conn, run.ref, ["dead", "alive"], now)
        for node_id, lease in (("dead", 30), ("alive", 600)):
            nodes.transition(
                conn,
                run.ref,
                node_id,
                [NodeStatus.PENDING],
                {
                    "status": "running",
                    "updated_at": now,
                    "lease_owner": "w",
                    "lease_expires_at": now + timedelta(seconds=lease),
                },
            )
    sent = [s for s in sweep_nodes_twice_later(engine, event_log) if s[0] == run.ref]
    assert sent == [(run.ref, "dead")]


class _Unreachable:
    """The services of a sweeper whose database does not answer."""

    def database_round_trip(self) -> float:
        raise sa.exc.OperationalError("SELECT 1", None, ConnectionError("database restarting"))


def test_after_a_sweep_that_could_not_reach_the_database_no_lease_is_reclaimed_for_one_lease(
    engine: sa.Engine, event_log: RedisEventLog, project: Project
) -> None:
    """A lease that lapsed while nobody could reach the database says nothing of its worker:
    the sweeper gives live workers one lease to renew before it reclaims anything."""
    lease = 2.0
    settings = base_settings(database_url=str(engine.url), worker_lease_seconds=lease)
    recorder = RecordingDispatcher(sent=[])
    run, _ = service_at(engine, event_log, recorder, 0).create(project, task_request(project))
    assert attempts_ahead(engine, event_log, recorder, 0).claim(
        run.ref, owner="w", lease_seconds=30
    )
    wired = wire(settings, pool_size=1, auth_cache_seconds=0)
    try:
        # The sweeper looks from 120 s ahead: this run's lease has lapsed by then.
        ahead = replace(wired, recovery=sweeper_ahead(engine, event_log, recorder, 120))
        sweeper = Sweeper(settings, Registry())
        sweeper.sweep_once(replace(wired, recovery=_Unreachable()))  # type: ignore[arg-type]
        assert not sweeper.steady()
        sweeper.sweep_once(ahead)
        loaded = service_at(engine, event_log, recorder, 0).load(run.ref)
        assert loaded is not None and loaded.status is RunStatus.RUNNING
        time.sleep(lease + 0.1)
        assert sweeper.steady()
        sweeper.sweep_once(ahead)
        loaded = service_at(engine, event_log, recorder, 0).load(run.ref)
        assert loaded is not None and loaded.status is not RunStatus.RUNNING
    finally:
        wired.close()


class _Stalled:
    def database_round_trip(self) -> float:
        return 30.0  # a statement that hung while the database was stopped


def test_a_round_trip_to_the_database_longer_than_the_renewal_interval_pauses_reclaims() -> None:
    settings = base_settings(worker_lease_seconds=60)
    sweeper = Sweeper(settings, Registry())
    assert sweeper.steady()
    sweeper._probe(replace(_wired_stub(), recovery=_Stalled()))  # type: ignore[arg-type]
    assert not sweeper.steady()


def _wired_stub() -> Wired:
    return Wired(*([None] * len(fields(Wired))))  # type: ignore[arg-type]
