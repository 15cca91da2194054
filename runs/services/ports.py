"""What the service needs from the outside world, as protocols: the adapters live elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from runs.domain.events import Closing, NewEvent, RunEvent
from runs.domain.runs import RunRef


class Dispatcher(Protocol):
    def dispatch(
        self,
        target: str,
        ref: RunRef,
        queue: str,
        *,
        node_id: str | None = None,
        countdown: float | None = None,
        attempt: int | None = None,
    ) -> None:
        """Send the job that executes the run ``ref`` (one node of it, when given), optionally
        after ``countdown`` seconds; ``attempt`` names the attempt of a task run it starts.
        Raises when the broker cannot take it."""

    def dispatch_group(self, target: str, jobs: Sequence[tuple[RunRef, int]], queue: str) -> None:
        """Send one job for runs of one target that travel together: each (run, the attempt
        that job starts). Raises when the broker cannot take it."""


class EventLog(Protocol):
    def append(
        self,
        ref: RunRef,
        events: Sequence[NewEvent],
        *,
        producer: str = "",
        sequence: str = "",
    ) -> list[int]: ...

    def open(self, ref: RunRef, owner: str, events: Sequence[NewEvent]) -> bool: ...

    def close(
        self, ref: RunRef, count: int, *, cancel: bool = False
    ) -> tuple[int, list[RunEvent]]: ...

    def close_attempt(
        self, ref: RunRef, owner: str, count: int, *, cancel: bool = False
    ) -> tuple[int, list[RunEvent]] | None: ...

    def publish(self, ref: RunRef, events: Sequence[RunEvent]) -> None: ...

    def close_attempts(
        self, closings: Sequence[Closing]
    ) -> list[tuple[int, list[RunEvent]] | None]: ...

    def publish_many(self, items: Sequence[tuple[RunRef, Sequence[RunEvent]]]) -> None: ...

    def expire(self, ref: RunRef) -> None: ...

    def forget(self, refs: Sequence[RunRef]) -> None: ...

    def read(self, ref: RunRef, *, after: int, limit: int) -> list[RunEvent]: ...

    def request_stop(self, ref: RunRef, node_id: str) -> None: ...
