"""Workflow node states: the vocabulary shared by the engine (workers) and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from runs.domain.runs import RunError


class NodeStatus(StrEnum):
    PENDING = "pending"  # not started
    QUEUED = "queued"  # its job was sent; a worker has not claimed it yet
    RUNNING = "running"
    WAITING = "waiting"  # parked on an approval or an event
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in NODE_TERMINAL


NODE_TERMINAL = frozenset(
    {NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELLED}
)
NODE_ACTIVE = frozenset({NodeStatus.QUEUED, NodeStatus.RUNNING, NodeStatus.WAITING})
NODE_SUCCEEDED = frozenset({NodeStatus.COMPLETED, NodeStatus.SKIPPED})


@dataclass(frozen=True, slots=True)
class NodeRecord:
    run_id: str
    node_id: str
    position: int
    status: NodeStatus
    attempt: int = 0
    arm: str | None = None
    output: Any = None
    error: RunError | None = None
    logs: str | None = None
    wait_event: str | None = None
    deadline: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


def approval_reason(node_id: str) -> str:
    return f"approval:{node_id}"


def event_reason(event: str, node_id: str) -> str:
    return f"event:{event}:{node_id}"
