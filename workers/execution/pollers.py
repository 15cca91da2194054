"""A process's helper thread that looks for work every few milliseconds while there is some,
and sleeps once there has been none for a while.

The threads that send an attempt's events (``outbox``) and watch a running group
(``task_groups``) are asked to look by every attempt or group. Waking a sleeping thread for
each costs the caller more than the work it hands over; a thread that polls while the
process is busy costs the caller nothing (``poke`` only reads a flag), and sleeps when idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Poller:
    """Calls ``tick`` every ``period`` seconds (``tick`` answers whether it found work); once
    neither ``tick`` nor ``poke`` has seen work for ``idle_seconds``, sleeps until poked."""

    def __init__(
        self, name: str, tick: Callable[[], bool], *, period: float, idle_seconds: float = 1.0
    ) -> None:
        self._tick = tick
        self._period = period
        self._idle_seconds = idle_seconds
        self._last_work = time.monotonic()
        self._parked = False
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def poke(self) -> None:
        """There is work: look soon (wakes the thread only when it sleeps)."""
        self._last_work = time.monotonic()
        if self._parked:
            self._wake.set()

    def _loop(self) -> None:
        while True:
            try:
                if self._tick():
                    self._last_work = time.monotonic()
            except Exception:
                log.exception("the %s thread failed", threading.current_thread().name)
            if time.monotonic() - self._last_work < self._idle_seconds:
                time.sleep(self._period)
                continue
            self._wake.clear()
            self._parked = True
            # A poke after the flag was set wakes the event; one before it moved _last_work.
            if time.monotonic() - self._last_work >= self._idle_seconds:
                self._wake.wait()
            self._parked = False
