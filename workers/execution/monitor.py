"""One thread per worker process that raises the cooperative cancel flag of running runs."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from runs.domain.runs import RunRef
from runs.streams.event_log import RedisEventLog

log = logging.getLogger(__name__)


class CancelMonitor:
    def __init__(self, events: RedisEventLog, *, interval: float) -> None:
        self._events = events
        self._interval = interval
        self._watched: dict[tuple[RunRef, str | None], threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(
        self, ref: RunRef, flag: threading.Event, node_id: str | None = None
    ) -> Iterator[None]:
        """Set ``flag`` once the run (or this node of it) is asked to stop."""
        key = (ref, node_id)
        with self._lock:
            self._watched[key] = flag
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="runs-cancel-monitor", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(key, None)

    def _loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(self._interval):
            with self._lock:
                watched = dict(self._watched)
            if not watched:
                continue
            try:
                flagged = self._events.cancel_requested(list(watched))
            except Exception:  # Redis briefly away: try again next tick
                log.warning("cancel monitor could not reach Redis", exc_info=True)
                continue
            for key in flagged:
                watched[key].set()
