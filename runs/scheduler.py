"""The ``runs scheduler`` process: fires due schedules and keeps their last outcomes, until
stopped. Any number may run at once (``runs.firing`` says why that is safe)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from runs.domain.clock import utcnow
from runs.firing import ScheduleFirer
from runs.settings import Settings
from runs.transient import TRANSIENT_ERRORS
from runs.wiring import Wired, wire

log = logging.getLogger(__name__)


def build_firer(settings: Settings, wired: Wired) -> ScheduleFirer:
    return ScheduleFirer(
        wired.engine,
        runs=wired.runs,
        grace_seconds=settings.scheduler_misfire_grace_seconds,
        batch_size=settings.scheduler_batch_size,
        max_catchup_runs=settings.scheduler_max_catchup_runs,
    )


class Scheduler:
    def __init__(self, settings: Settings, firer: ScheduleFirer) -> None:
        self._poll = settings.scheduler_poll_seconds
        self._heartbeat = settings.scheduler_heartbeat_file
        self._firer = firer
        self.stopping = threading.Event()

    def run(self) -> None:
        log.info("scheduler started (polling every %g s)", self._poll)
        while not self.stopping.is_set():
            pause = self.tick()
            if self._heartbeat is not None:
                self._heartbeat.touch()
            self.stopping.wait(pause)
        log.info("scheduler stopped")

    def tick(self) -> float:
        """One round: fire what is due, settle what ended. Returns how long to sleep."""
        try:
            created = self._firer.fire_due()
            if created:
                log.info("fired %d runs", created)
            self._firer.settle()
            return self._until_next(self._firer.next_due(), utcnow())
        except TRANSIENT_ERRORS:
            log.warning("storage unreachable; trying again in %g s", self._poll, exc_info=True)
            return self._poll

    def _until_next(self, due: datetime | None, now: datetime) -> float:
        if due is None:
            return self._poll
        return min(self._poll, max(0.0, (due - now).total_seconds()))


def serve(settings: Settings) -> None:
    """Run a scheduler in this process until SIGINT or SIGTERM."""
    import signal

    wired = wire(settings, pool_size=2, auth_cache_seconds=0)
    scheduler = Scheduler(settings, build_firer(settings, wired))

    def stop(*_: object) -> None:
        scheduler.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        scheduler.run()
    finally:
        wired.close()
