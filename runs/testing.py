"""In-memory stand-ins for the ports the services talk through (``runs.services.ports``), so
that a service's unit test needs no Redis and no broker: ``InMemoryEventLog`` keeps the event
log's promises (integer ids that only grow, a closed log refusing appends, the terminal event
last, a retried call changing nothing twice) and ``RecordingDispatcher`` records the jobs it was
asked to send.

    from runs.testing import InMemoryEventLog, RecordingDispatcher

    runs = RunService(engine, dispatcher=RecordingDispatcher(), events=InMemoryEventLog(), ...)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from runs.domain.events import Closing, NewEvent, RunEvent
from runs.domain.runs import RunRef

_ANYONE = "*"  # who closed a stream for a cancel or the sweeper


@dataclass
class _Stream:
    events: list[RunEvent] = field(default_factory=list)
    seq: int = 0
    owner: str | None = None  # the attempt that opened it
    closed_by: str | None = None
    final: int = 0  # the first id the last close reserved
    cancel: bool = False
    stops: set[str] = field(default_factory=set)  # nodes asked to stop
    last_call: dict[str, tuple[str, list[int]]] = field(default_factory=dict)

    def top(self) -> int:
        return self.events[-1].event_id if self.events else 0

    def add(self, events: Sequence[NewEvent]) -> list[int]:
        now = datetime.now(UTC)
        ids = list(range(self.seq + 1, self.seq + len(events) + 1))
        self.seq += len(events)
        self.events += [
            RunEvent(i, e.event_type, e.payload, now) for i, e in zip(ids, events, strict=True)
        ]
        return ids

    def release_reserved(self) -> None:
        """An attempt's close whose final events never came gives its ids back."""
        if self.closed_by not in (None, _ANYONE) and self.final > self.top():
            self.seq = self.final - 1


class InMemoryEventLog:
    """``runs.services.ports.EventLog`` in a dictionary (one process; thread-safe)."""

    def __init__(self) -> None:
        self._streams: dict[RunRef, _Stream] = {}
        self._lock = threading.Lock()

    def _of(self, ref: RunRef) -> _Stream:
        return self._streams.setdefault(ref, _Stream())

    def append(
        self,
        ref: RunRef,
        events: Sequence[NewEvent],
        *,
        producer: str = "",
        sequence: str = "",
    ) -> list[int]:
        with self._lock:
            stream = self._of(ref)
            if stream.closed_by is not None or not events:
                return []
            last = stream.last_call.get(producer) if producer else None
            if last is not None and last[0] == sequence:
                return last[1]
            ids = stream.add(events)
            if producer:
                stream.last_call[producer] = (sequence, ids)
            return ids

    def open(self, ref: RunRef, owner: str, events: Sequence[NewEvent]) -> bool:
        with self._lock:
            stream = self._of(ref)
            if stream.cancel or stream.closed_by == _ANYONE:
                return False
            if stream.owner == owner:
                return True
            if stream.closed_by is not None and stream.final <= stream.top():
                return False  # the run ended: its final events are in
            stream.release_reserved()
            stream.closed_by, stream.owner = None, owner
            stream.add(events)
            return True

    def close(self, ref: RunRef, count: int, *, cancel: bool = False) -> tuple[int, list[RunEvent]]:
        closed = self._close(ref, count, cancel=cancel, owner=_ANYONE)
        assert closed is not None
        return closed

    def close_attempt(
        self, ref: RunRef, owner: str, count: int, *, cancel: bool = False
    ) -> tuple[int, list[RunEvent]] | None:
        return self._close(ref, count, cancel=cancel, owner=owner)

    def _close(
        self, ref: RunRef, count: int, *, cancel: bool, owner: str
    ) -> tuple[int, list[RunEvent]] | None:
        with self._lock:
            stream = self._of(ref)
            if owner != _ANYONE:
                if stream.closed_by is not None:
                    if stream.closed_by != owner:
                        return None
                    return stream.final, [e for e in stream.events if e.event_id < stream.final]
                if stream.owner is not None and stream.owner != owner:
                    return None
            else:
                stream.release_reserved()
            stream.closed_by = owner
            stream.cancel = stream.cancel or cancel
            stream.final = stream.seq + 1
            stream.seq += count
            return stream.final, [e for e in stream.events if e.event_id < stream.final]

    def publish(self, ref: RunRef, events: Sequence[RunEvent]) -> None:
        with self._lock:
            stream = self._of(ref)
            top = stream.top()
            stream.events += [e for e in events if e.event_id > top]

    def close_attempts(
        self, closings: Sequence[Closing]
    ) -> list[tuple[int, list[RunEvent]] | None]:
        answers = []
        for ref, owner, count, opening in closings:
            if opening is not None:
                self.open(ref, owner, opening)
            answers.append(self.close_attempt(ref, owner, count))
        return answers

    def publish_many(self, items: Sequence[tuple[RunRef, Sequence[RunEvent]]]) -> None:
        for ref, events in items:
            self.publish(ref, events)

    def expire(self, ref: RunRef) -> None:
        """Nothing expires here: the test process ends first."""

    def forget(self, refs: Sequence[RunRef]) -> None:
        with self._lock:
            for ref in refs:
                self._streams.pop(ref, None)

    def read(self, ref: RunRef, *, after: int, limit: int) -> list[RunEvent]:
        with self._lock:
            stream = self._streams.get(ref)
            found = [e for e in stream.events if e.event_id > after] if stream else []
            return found[:limit]

    def request_stop(self, ref: RunRef, node_id: str) -> None:
        with self._lock:
            self._of(ref).stops.add(node_id)

    def cancel_requested(self, ref: RunRef, node_id: str | None = None) -> bool:
        """Whether the run (or the node) was asked to stop."""
        with self._lock:
            stream = self._streams.get(ref)
            return bool(stream and (stream.cancel or node_id in stream.stops))


@dataclass
class RecordingDispatcher:
    """``runs.services.ports.Dispatcher`` that records what it was asked to send:
    ``sent`` holds (target, run, queue) of each run's job, ``nodes_sent`` (run, node) of each
    step's; with ``fail``, it raises as a broker that is down does."""

    sent: list[tuple[str, RunRef, str]] = field(default_factory=list)
    fail: bool = False
    nodes_sent: list[tuple[RunRef, str]] = field(default_factory=list)
    groups_sent: list[list[RunRef]] = field(default_factory=list)

    def dispatch_group(self, target: str, jobs: Sequence[tuple[RunRef, int]], queue: str) -> None:
        """Recorded in ``sent`` run by run, and the group in ``groups_sent``."""
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.groups_sent.append([ref for ref, _ in jobs])
        self.sent.extend((target, ref, queue) for ref, _ in jobs)

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
        if self.fail:
            raise ConnectionError("broker unreachable")
        if node_id is not None:
            self.nodes_sent.append((ref, node_id))
            return
        self.sent.append((target, ref, queue))
