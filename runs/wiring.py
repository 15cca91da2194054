"""Builds the services of one process from settings: engine, event log, dispatcher and the
use-case objects over them. Entry points (API, worker, sweeper) call it; tests wire by hand."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from runs.messaging.dispatch import CeleryDispatcher
from runs.messaging.routing import Router
from runs.persistence.engine import create_engine
from runs.scheduling.catalogue import ScheduleService
from runs.services.access import AccessService
from runs.services.attempt_groups import AttemptGroups
from runs.services.attempts import AttemptService
from runs.services.catalog import DefinitionCatalog
from runs.services.recovery import RecoveryService
from runs.services.runs import RunService
from runs.services.workflows import WorkflowService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog


@dataclass
class Wired:
    engine: sa.Engine
    events: RedisEventLog
    dispatcher: CeleryDispatcher
    catalog: DefinitionCatalog
    runs: RunService
    attempts: AttemptService
    groups: AttemptGroups
    recovery: RecoveryService
    workflows: WorkflowService
    access: AccessService
    schedules: ScheduleService

    def close(self) -> None:
        self.dispatcher.close()
        self.events.client.close()
        self.engine.dispose()


def wire(
    settings: Settings, *, pool_size: int, auth_cache_seconds: float, patience: float = 0.0
) -> Wired:
    """``patience``: how long the services of a worker keep trying a state change while
    storage is unreachable (``runs.services.transient.patiently``); the API and the sweeper answer at
    once (0)."""
    engine = create_engine(settings.database_url, pool_size=pool_size)
    events = RedisEventLog.from_url(
        settings.redis_url, ttl_seconds=settings.stream_ttl_seconds, cluster=settings.redis_cluster
    )
    dispatcher = CeleryDispatcher.from_settings(settings)
    catalog = DefinitionCatalog(engine, cache_seconds=settings.target_cache_seconds)
    runs = RunService(
        engine,
        dispatcher=dispatcher,
        events=events,
        router=Router(settings.route_table, settings.default_queue),
        catalog=catalog,
        max_input_bytes=settings.max_input_bytes,
        max_timeout_seconds=settings.max_timeout_seconds,
        group_size=settings.group_max_runs,
    )
    attempts = AttemptService(engine, dispatcher=dispatcher, events=events, patience=patience)
    return Wired(
        engine=engine,
        events=events,
        dispatcher=dispatcher,
        catalog=catalog,
        runs=runs,
        attempts=attempts,
        groups=AttemptGroups(
            engine, attempts=attempts, dispatcher=dispatcher, events=events, patience=patience
        ),
        recovery=RecoveryService(engine, attempts=attempts, dispatcher=dispatcher, events=events),
        workflows=WorkflowService(
            engine, runs=runs, events=events, dispatcher=dispatcher, patience=patience
        ),
        access=AccessService(engine, cache_seconds=auth_cache_seconds),
        schedules=ScheduleService(engine, runs=runs),
    )
