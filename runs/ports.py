"""What the service needs from the outside world, as protocols: the adapters live elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from runs.domain.events import NewEvent, RunEvent


class Dispatcher(Protocol):
    def dispatch(
        self,
        target: str,
        run_id: str,
        queue: str,
        *,
        node_id: str | None = None,
        countdown: float | None = None,
    ) -> None:
        """Send the job that executes ``run_id`` (one node of it, when given), optionally
        after ``countdown`` seconds; raises when the broker cannot take it."""


class EventLog(Protocol):
    def append(self, run_id: str, events: Sequence[NewEvent]) -> list[int]: ...

    def close(
        self, run_id: str, count: int, *, cancel: bool = False
    ) -> tuple[int, list[RunEvent]]: ...

    def publish(self, run_id: str, events: Sequence[RunEvent]) -> None: ...

    def reopen(self, run_id: str) -> bool: ...

    def read(self, run_id: str, *, after: int, limit: int) -> list[RunEvent]: ...

    def request_stop(self, run_id: str, node_id: str) -> None: ...
