"""Per-process resources of a worker (engine, Redis, service), built lazily after fork."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from runs.access import AccessService
from runs.catalog import DefinitionCatalog
from runs.dispatch import CeleryDispatcher
from runs.events import RedisEventLog
from runs.persistence.engine import create_engine
from runs.routing import Router
from runs.service import RunService
from runs.settings import Settings
from runs.workflow_state import WorkflowState
from workers.monitor import CancelMonitor
from workers.registry import Registry


@dataclass
class WorkerRuntime:
    settings: Settings
    registry: Registry
    service: RunService
    workflows: WorkflowState
    access: AccessService
    events: RedisEventLog
    monitor: CancelMonitor
    worker_id: str


_runtime: tuple[int, WorkerRuntime] | None = None


def get_runtime(settings: Settings, registry: Registry) -> WorkerRuntime:
    """The runtime of this process; a forked child builds its own (no shared connections)."""
    global _runtime
    pid = os.getpid()
    if _runtime is None or _runtime[0] != pid:
        _runtime = (pid, _build(settings, registry, pid))
    return _runtime[1]


def _build(settings: Settings, registry: Registry, pid: int) -> WorkerRuntime:
    engine = create_engine(settings.database_url, pool_size=2)
    events = RedisEventLog.from_url(
        settings.redis_url, ttl_seconds=settings.event_stream_ttl_seconds
    )
    dispatcher = CeleryDispatcher.from_settings(settings)
    router = Router(settings.route_table, settings.default_queue)
    service = RunService(
        engine,
        dispatcher=dispatcher,
        events=events,
        router=router,
        catalog=DefinitionCatalog(engine, cache_seconds=settings.target_cache_seconds),
        max_input_bytes=settings.max_input_bytes,
    )
    return WorkerRuntime(
        settings=settings,
        registry=registry,
        service=service,
        workflows=WorkflowState(engine, runs=service, events=events, dispatcher=dispatcher),
        access=AccessService(engine, cache_seconds=60),
        events=events,
        monitor=CancelMonitor(events, interval=settings.worker_heartbeat_seconds),
        worker_id=f"{socket.gethostname()}:{pid}",
    )
