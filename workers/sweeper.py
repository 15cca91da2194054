"""The sweeper: a thread in each worker's main process that keeps accepted runs moving.

Every interval it re-sends the jobs of runs left pending (and workflow steps left queued) too
long, reclaims task runs whose worker stopped renewing its lease (a new attempt, or ``failed``
with ``worker_lost``), notes when the work of cancelled runs stopped, and expires runs that
waited past the queue TTL. Every step is a conditional update: several sweepers are safe.
With ``retention_days`` set it also deletes runs that finished longer ago (``runs.services.retention``),
a bounded number of batches per sweep; several sweepers split the work between them.

A lease that lapsed while the database could not be reached (down, restarting, or stalled) says
nothing about its worker: no worker could renew it either. So after the sweeper itself could
not reach the database (a sweep failed, or a round trip to the database took longer than a
third of the lease, the renewal interval), it reclaims nothing for one lease: live workers
renew their leases meanwhile, and a finished attempt records its outcome instead of being
failed as lost.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from runs.domain.runs import Run
from runs.observability import metrics
from runs.services.retention import RetentionService
from runs.settings import Settings
from runs.wiring import Wired, wire
from workers.definitions.registry import Registry
from workers.execution.policy import backoff_delay, policy_for

log = logging.getLogger(__name__)

# Batches of ``retention_batch_size`` runs one sweep deletes at most, so that a backlog (the
# first sweep after retention was turned on) does not hold up reclaiming lost runs.
RETENTION_BATCHES_PER_SWEEP = 20


class Sweeper:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self._settings = settings
        self._registry = registry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runs-sweeper", daemon=True)
        # Since when (monotonic) the database has answered this sweeper steadily.
        self._steady_since = float("-inf")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        wired = wire(self._settings, pool_size=1, auth_cache_seconds=0)
        try:
            while not self._stop.wait(self._settings.sweep_interval_seconds):
                self.sweep_once(wired)
        finally:
            wired.close()

    def sweep_once(self, wired: Wired) -> None:
        """One sweep; a failure is logged, and says the database was out of reach."""
        try:
            self.sweep(wired)
        except Exception:
            self._steady_since = time.monotonic()
            log.warning("sweep failed; trying again next interval", exc_info=True)

    def sweep(self, wired: Wired) -> None:
        settings = self._settings
        older = settings.pending_redispatch_seconds
        self._probe(wired)
        sent = wired.recovery.redispatch_stale(older_than_seconds=older)
        metrics.jobs_redispatched("run", sent)
        steps = wired.recovery.redispatch_stale_steps(
            older_than_seconds=older, lapsed=self.steady()
        )
        metrics.jobs_redispatched("step", steps)
        sent += steps
        reclaimed = stopped = 0
        self._probe(wired)
        if self.steady():
            reclaimed = wired.recovery.reclaim_expired(
                max_attempts=self._max_attempts,
                backoff=lambda attempt: backoff_delay(settings, attempt),
            )
            stopped = wired.recovery.record_lost_stops()
        else:
            log.info("sweep: no lease is reclaimed until the database answers steadily")
        expired = 0
        if settings.queue_ttl_seconds is not None:
            expired = wired.recovery.expire_stale(ttl_seconds=settings.queue_ttl_seconds)
        if sent or reclaimed or stopped or expired:
            log.info(
                "sweep: %d jobs re-sent, %d runs reclaimed from lost workers, %d stops noted, "
                "%d runs expired",
                sent,
                reclaimed,
                stopped,
                expired,
            )
        self.prune(wired)

    def steady(self) -> bool:
        """Whether the database has answered this sweeper steadily for a whole lease."""
        return time.monotonic() - self._steady_since >= self._settings.worker_lease_seconds

    def _probe(self, wired: Wired) -> None:
        """One round trip to the database: one that takes longer than the lease renewal
        interval means the database was out of reach meanwhile (for the workers too). A
        failure raises, and the sweep is marked failed."""
        if wired.recovery.database_round_trip() > self._settings.worker_lease_seconds / 3:
            self._steady_since = time.monotonic()

    def prune(self, wired: Wired) -> int:
        """Delete runs past the retention period; how many (none when retention is off)."""
        settings = self._settings
        if settings.retention_days is None:
            return 0
        pruner = RetentionService(wired.engine, events=wired.events)
        pruned = pruner.prune(
            older_than=timedelta(days=settings.retention_days),
            batch_size=settings.retention_batch_size,
            max_batches=RETENTION_BATCHES_PER_SWEEP,
        )
        if pruned:
            log.info("sweep: %d finished runs past retention deleted", pruned)
        return pruned

    def _max_attempts(self, run: Run) -> int:
        return policy_for(self._settings, self._registry.find(run.target), run).max_attempts
