"""Retention: finished runs older than the retention period are deleted, in bounded batches.

A run goes with everything that is its own: its archived events, its workflow nodes, the
schedule firing that created it (``runs.persistence.retention`` says which runs wait longer)
and its Redis stream. Only terminal runs are ever deleted.

Any number of processes may prune at once: each batch is one transaction over rows it locked
(PostgreSQL skips rows another pruner holds; SQLite takes its write lock first), so each run
is deleted once and no pruner waits for another's rows. Like ``service``, it owns its
transactions and never imports Celery or redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.persistence import retention
from runs.services.ports import EventLog

log = logging.getLogger(__name__)


class RetentionService:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        events: EventLog,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._events = events
        self._clock = clock

    def prune_batch(self, *, older_than: timedelta, batch_size: int) -> int:
        """Delete up to ``batch_size`` runs that finished more than ``older_than`` ago, then
        their Redis keys. Returns how many runs this call deleted."""
        cutoff = self._clock() - older_than
        with self._engine.begin() as conn:
            retention.take_write_lock(conn)
            doomed = retention.expired_runs(conn, cutoff, batch_size)
            deleted = retention.delete_runs(conn, doomed)
        if doomed:
            try:
                self._events.forget([d.ref for d in doomed])
            except Exception:  # their keys expire on their own (every terminal path sets it)
                log.warning("could not delete the Redis keys of %d pruned runs", len(doomed))
        return deleted

    def prune(self, *, older_than: timedelta, batch_size: int, max_batches: int) -> int:
        """Batches until one finds nothing or ``max_batches`` ran. Returns how many runs were
        deleted. (Not until one comes back short: a batch may free parents whose children it
        deleted, and a pruner's batch skips children another one holds.)"""
        deleted = 0
        for _ in range(max_batches):
            found = self.prune_batch(older_than=older_than, batch_size=batch_size)
            if not found:
                break
            deleted += found
        return deleted
