"""The ``runs scheduler`` process: fires due schedules and keeps their last outcomes, until
stopped. Any number may run at once (``runs.scheduling.firing`` says why that is safe)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from runs.domain.clock import utcnow
from runs.observability.metrics_server import serve_metrics
from runs.scheduling.firing import PassResult, ScheduleFirer
from runs.services.transient import TRANSIENT_ERRORS
from runs.settings import Settings
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


# While another scheduler holds the due schedules (its pass is open), the earliest one stays
# in the past: look again after this long rather than at once.
BUSY_PAUSE_SECONDS = 0.05


class Scheduler:
    def __init__(self, settings: Settings, firer: ScheduleFirer) -> None:
        self._poll = settings.scheduler_poll_seconds
        self._heartbeat = settings.scheduler_heartbeat_file
        self._firer = firer
        self._settled_at = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        log.info("scheduler started (polling every %g s)", self._poll)
        while not self.stopping.is_set():
            pause = self.tick()
            self._beat()
            self.stopping.wait(pause)
        log.info("scheduler stopped")

    def tick(self) -> float:
        """One round: fire what is due, settle what ended (at most once a poll interval).
        Returns how long to sleep."""
        try:
            self._firer.fire_due(stop=self.stopping.is_set, on_pass=self._passed)
            if time.monotonic() - self._settled_at >= self._poll:
                self._firer.settle()
                self._settled_at = time.monotonic()
            return self._until_next(self._firer.next_due(), utcnow())
        except TRANSIENT_ERRORS:
            log.warning("storage unreachable; trying again in %g s", self._poll, exc_info=True)
            return self._poll

    def _passed(self, result: PassResult) -> None:
        if result.created:
            log.info("fired %d runs", len(result.created))
        self._beat()

    def _beat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.touch()

    def _until_next(self, due: datetime | None, now: datetime) -> float:
        if due is None:
            return self._poll
        wait = (due - now).total_seconds()
        if wait <= 0:  # still due after this round: another scheduler is firing it
            return BUSY_PAUSE_SECONDS
        return min(self._poll, wait)


def serve(settings: Settings) -> None:
    """Run a scheduler in this process until SIGINT or SIGTERM."""
    import signal

    wired = wire(settings, pool_size=2, auth_cache_seconds=0)
    scheduler = Scheduler(settings, build_firer(settings, wired))
    port = settings.scheduler_metrics_port
    metrics = serve_metrics(settings.metrics_host, port) if port is not None else None
    if metrics is not None:
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, metrics.port)

    def stop(*_: object) -> None:
        scheduler.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        scheduler.run()
    finally:
        if metrics is not None:
            metrics.close()
        wired.close()
