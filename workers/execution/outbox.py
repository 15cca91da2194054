"""The events an attempt emits (log lines, custom events), sent to the event log in batches.

An attempt puts its events in its outbox and goes on; one thread per process sends what is
waiting within a few milliseconds, many events to a round trip, and an attempt that fills a
batch sends it itself. Batches of one outbox leave in order. Before its outcome is recorded an
attempt flushes its outbox, so that its events come before the final ones.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

from runs.domain.events import NewEvent
from workers.execution.pollers import Poller

log = logging.getLogger(__name__)

BATCH = 512  # events an attempt sends itself once that many wait
WAIT_SECONDS = 0.002  # how long the flusher lets events gather before it sends them


class EventOutbox:
    """``send(events, number)`` sends one batch; the same number means the same batch."""

    def __init__(self, send: Callable[[Sequence[NewEvent], int], None]) -> None:
        self._send = send
        self._pending: list[NewEvent] = []
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # one batch of this outbox at a time, in order
        self._unsent: list[NewEvent] = []  # the batch being sent (kept while it fails)
        self._number = 0

    def put(self, events: Sequence[NewEvent]) -> None:
        with self._lock:
            first = not self._pending  # the flusher needs waking only for the first
            self._pending.extend(events)
            full = len(self._pending) >= BATCH
        if full:
            self.flush()
        elif first:
            _flusher().wake(self)

    def flush(self) -> None:
        """Send whatever waits, now (returns once it is sent; raises when a send fails, and
        the next flush sends that batch again first)."""
        with self._sending:
            while True:
                if not self._unsent:
                    with self._lock:
                        self._unsent, self._pending = self._pending, []
                    if not self._unsent:
                        return
                    self._number += 1
                self._send(self._unsent, self._number)
                self._unsent = []

    def take_unsent(self) -> list[NewEvent] | None:
        """Every event put so far, taken out to be sent by the caller, when none has gone out
        yet; None once a batch has (``flush`` sends the rest)."""
        with self._sending:
            if self._number:
                return None
            with self._lock:
                events, self._pending = self._pending, []
            self._number = 1  # the caller sends them as this outbox's first batch
            return events


class _Flusher:
    """The thread of a process that sends the events waiting in outboxes: it looks every
    ``WAIT_SECONDS`` while attempts put events (``pollers.Poller``)."""

    def __init__(self) -> None:
        self._due: set[EventOutbox] = set()
        self._lock = threading.Lock()
        self._poller = Poller("runs-event-flusher", self._send_due, period=WAIT_SECONDS)

    def wake(self, outbox: EventOutbox) -> None:
        with self._lock:
            self._due.add(outbox)
        self._poller.poke()

    def _send_due(self) -> bool:
        with self._lock:
            due, self._due = self._due, set()
        for outbox in due:
            try:
                outbox.flush()
            except Exception:  # Redis away: the attempt's own flush tries again
                log.warning("could not send events of an attempt", exc_info=True)
        return bool(due)


_flushers: dict[int, _Flusher] = {}
_flushers_lock = threading.Lock()


def _flusher() -> _Flusher:
    """The flusher of this process (a forked pool process starts its own)."""
    pid = os.getpid()
    flusher = _flushers.get(pid)
    if flusher is None:
        with _flushers_lock:
            flusher = _flushers.get(pid) or _flushers.setdefault(pid, _Flusher())
    return flusher
