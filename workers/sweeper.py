"""The sweeper: a thread in each worker's main process that re-sends the jobs of runs left
pending, and of workflow steps left queued, too long. Several sweepers at once are safe."""

from __future__ import annotations

import logging
import threading

from runs.catalog import DefinitionCatalog
from runs.dispatch import CeleryDispatcher
from runs.events import RedisEventLog
from runs.persistence.engine import create_engine
from runs.routing import Router
from runs.service import RunService
from runs.settings import Settings
from runs.workflow_state import WorkflowState

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
        engine = create_engine(settings.database_url, pool_size=1)
        dispatcher = CeleryDispatcher.from_settings(settings)
        events = RedisEventLog.from_url(
            settings.redis_url, ttl_seconds=settings.event_stream_ttl_seconds
        )
        service = RunService(
            engine,
            dispatcher=dispatcher,
            events=events,
            router=Router(settings.route_table, settings.default_queue),
            catalog=DefinitionCatalog(engine, cache_seconds=settings.target_cache_seconds),
            max_input_bytes=settings.max_input_bytes,
        )
        workflows = WorkflowState(engine, runs=service, events=events, dispatcher=dispatcher)
        try:
            while not self._stop.wait(settings.sweep_interval_seconds):
                try:
                    older = settings.pending_redispatch_seconds
                    sent = service.redispatch_stale(older_than_seconds=older)
                    sent += workflows.redispatch_stale(older_than_seconds=older)
                except Exception:
                    log.warning("sweep failed; trying again next interval", exc_info=True)
                    continue
                if sent:
                    log.info("re-sent %d jobs of stale pending runs and queued steps", sent)
        finally:
            dispatcher.close()
            engine.dispose()
