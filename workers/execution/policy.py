"""How many attempts a task run gets, how long each may take, and how long to wait between."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypeVar

from runs.domain.runs import Run
from runs.settings import Settings
from workers.definitions.registry import TaskDefinition

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AttemptPolicy:
    max_attempts: int
    timeout_seconds: float
    queue_ttl_seconds: float | None

    def waited_too_long(self, run: Run) -> bool:
        """The attempt just claimed started after the run waited past the queue TTL."""
        if self.queue_ttl_seconds is None:
            return False
        since = run.available_at or run.created_at
        started = run.attempt_started_at or since
        return (started - since).total_seconds() > self.queue_ttl_seconds


def policy_for(settings: Settings, definition: TaskDefinition | None, run: Run) -> AttemptPolicy:
    """The run's own values first, then its definition's, then the settings' defaults."""
    backoff_limit = _first(
        run.backoff_limit,
        definition.backoff_limit if definition else None,
        settings.default_backoff_limit,
    )
    timeout = _first(
        run.timeout_seconds,
        definition.timeout_seconds if definition else None,
        settings.max_timeout_seconds,
    )
    return AttemptPolicy(
        max_attempts=backoff_limit + 1,
        timeout_seconds=min(timeout, settings.max_timeout_seconds),
        queue_ttl_seconds=settings.queue_ttl_seconds,
    )


def backoff_delay(settings: Settings, attempt: int) -> float:
    """Delay after attempt ``attempt`` failed: exponential, jittered down by up to half so
    that runs failing together do not retry together."""
    ceiling: float = min(
        settings.retry_backoff_seconds * 2.0 ** (attempt - 1), settings.retry_backoff_max_seconds
    )
    return ceiling * random.uniform(0.5, 1.0)


def _first(*values: T | None) -> T:
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value")
