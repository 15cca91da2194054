"""Per-process resources of a worker (engine, Redis, service), built lazily after fork."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from runs.services.access import AccessService
from runs.services.attempt_groups import AttemptGroups
from runs.services.attempts import AttemptService
from runs.services.runs import RunService
from runs.services.workflows import WorkflowService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog
from runs.wiring import wire
from workers.definitions.registry import Registry
from workers.execution.monitor import CancelMonitor


@dataclass
class WorkerRuntime:
    settings: Settings
    registry: Registry
    runs: RunService
    attempts: AttemptService
    groups: AttemptGroups
    workflows: WorkflowService
    access: AccessService
    events: RedisEventLog
    monitor: CancelMonitor
    worker_id: str

    def new_owner(self) -> str:
        """A token unique to one claim (of a run or of a step): the lease is held by it, and
        every call made for that attempt names it, so that a retry of a call whose answer was
        lost is known as the same attempt's."""
        return f"{self.worker_id}:{uuid.uuid4().hex[:12]}"


_runtime: tuple[int, WorkerRuntime] | None = None


def get_runtime(settings: Settings, registry: Registry) -> WorkerRuntime:
    """The runtime of this process; a forked child builds its own (no shared connections)."""
    global _runtime
    pid = os.getpid()
    if _runtime is None or _runtime[0] != pid:
        _runtime = (pid, _build(settings, registry, pid))
    return _runtime[1]


def _build(settings: Settings, registry: Registry, pid: int) -> WorkerRuntime:
    wired = wire(
        settings, pool_size=2, auth_cache_seconds=60, patience=settings.finish_retry_seconds
    )
    return WorkerRuntime(
        settings=settings,
        registry=registry,
        runs=wired.runs,
        attempts=wired.attempts,
        groups=wired.groups,
        workflows=wired.workflows,
        access=wired.access,
        events=wired.events,
        monitor=CancelMonitor(wired.events, interval=settings.worker_heartbeat_seconds),
        worker_id=f"{socket.gethostname()}:{pid}",
    )
