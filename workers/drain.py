"""A worker's graceful stop. On SIGTERM Celery's warm shutdown stops taking jobs and waits for
the running ones; ``Drain`` gives them ``RUNS_WORKER_DRAIN_SECONDS``, then asks every pool
process to stop its attempts (a real-time signal, read by ``workers.execution.guard``). Each stopped attempt hands
its run back (pending at once, the attempt not counted) instead of leaving it to the sweeper
once its lease lapses; an attempt that ignores the stop is interrupted and then killed, as a
cancelled one would be."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any

from workers.execution.guard import request_drain

log = logging.getLogger(__name__)

# Not SIGUSR1: billiard raises soft time limits in pool processes with it; SIGUSR2 is the
# guard's interrupt. A real-time signal is nobody else's.
DRAIN_SIGNAL = signal.SIGRTMIN + 3


def listen_for_drain() -> None:
    """In a pool process: the drain signal stops this process's attempts."""
    signal.signal(DRAIN_SIGNAL, request_drain)


class Drain:
    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._worker: Any = None
        self._started = False

    def attach(self, worker: Any) -> None:
        """The worker whose pool processes the drain signals (``worker_init``'s sender)."""
        self._worker = worker

    def begin(self, **_: Any) -> None:
        """The worker is shutting down (``worker_shutting_down``): the drain time starts."""
        if self._started:
            return
        self._started = True
        log.info("draining: running attempts have %.0f s to end", self._seconds)
        threading.Thread(target=self._expire_later, name="runs-drain", daemon=True).start()

    def _expire_later(self) -> None:
        time.sleep(self._seconds)
        pids = self._pool_processes()
        log.warning("drain time over: handing back the runs still running")
        if not pids:  # a threads or solo pool: the attempts run in this process
            request_drain()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, DRAIN_SIGNAL)

    def _pool_processes(self) -> list[int]:
        pool = getattr(self._worker, "pool", None)
        if pool is None:
            return []
        try:
            info = pool.info  # a prefork pool lists its processes
        except Exception:  # a pool without processes
            return []
        return [int(pid) for pid in info.get("processes", ()) if pid != os.getpid()]
