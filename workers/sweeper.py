"""The sweeper: a thread in each worker's main process that re-sends the jobs of runs left
pending, and of workflow steps left queued, too long. Several sweepers at once are safe."""

from __future__ import annotations

import logging
import threading

from runs.settings import Settings
from runs.wiring import wire

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runs-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        settings = self._settings
        wired = wire(settings, pool_size=1, auth_cache_seconds=0)
        older = settings.pending_redispatch_seconds
        try:
            while not self._stop.wait(settings.sweep_interval_seconds):
                try:
                    sent = wired.runs.redispatch_stale(older_than_seconds=older)
                    sent += wired.workflows.redispatch_stale(older_than_seconds=older)
                except Exception:
                    log.warning("sweep failed; trying again next interval", exc_info=True)
                    continue
                if sent:
                    log.info("re-sent %d jobs of stale pending runs and queued steps", sent)
        finally:
            wired.close()
