"""Use cases of runs that API callers ask for: create, get, list, events, cancel. Owns the
transactions. Creating is ``runs.services.creation``; executing is ``attempts``, recovering
``recovery``.

Never imports FastAPI, Celery or redis: the dispatcher and event log are handed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Generic, TypeVar

import sqlalchemy as sa

from runs.domain import events as ev
from runs.domain.clock import utcnow
from runs.domain.errors import (
    InvalidRequest,
    NotFound,
    Unsupported,
)
from runs.domain.events import RunEvent
from runs.domain.projects import Project
from runs.domain.runs import (
    RUN_ID_PATTERN,
    ErrorCode,
    Run,
    RunError,
    RunKind,
    RunRef,
    RunRequest,
    RunStatus,
    duration_ms,
)
from runs.messaging.routing import Router
from runs.observability import metrics
from runs.persistence import event_archive, nodes, records, transitions
from runs.persistence.cursors import decode_cursor, encode_cursor
from runs.persistence.engine import autocommit
from runs.persistence.records import RunFilters
from runs.services.catalog import DefinitionCatalog
from runs.services.creation import Created, RunCreation
from runs.services.ports import Dispatcher, EventLog

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next: str | None


class RunService:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        dispatcher: Dispatcher,
        events: EventLog,
        router: Router,
        catalog: DefinitionCatalog,
        max_input_bytes: int,
        max_timeout_seconds: int | None = None,
        group_size: int = 1,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._auto = autocommit(engine)
        self._events = events
        self._clock = clock
        self.creation = RunCreation(
            engine,
            dispatcher=dispatcher,
            router=router,
            catalog=catalog,
            max_input_bytes=max_input_bytes,
            max_timeout_seconds=max_timeout_seconds,
            group_size=group_size,
            clock=clock,
        )

    # -- creating -------------------------------------------------------------------------

    def create(self, project: Project, request: RunRequest) -> Created:
        """Accept a run: commit it as pending, then send its job. Returns (run, duplicate)."""
        (accepted,) = self.create_many([(project, request)])
        if isinstance(accepted, Exception):
            raise accepted
        return accepted

    def create_many(
        self, requests: Sequence[tuple[Project, RunRequest]]
    ) -> list[Created | Exception]:
        """Accept runs together (``runs.services.creation``)."""
        return self.creation.create_many(requests)

    # -- reading --------------------------------------------------------------------------

    def load(self, ref: RunRef) -> Run | None:
        """A run by project and id (for workers, which read it from their job)."""
        with self._auto.connect() as conn:
            return records.get_run(conn, ref)

    def get(self, project: Project, run_id: str) -> Run:
        """A run of the caller's project; any other run id is not found."""
        if not RUN_ID_PATTERN.fullmatch(run_id):
            raise NotFound(f"run {run_id!r} not found")
        run = self.load(RunRef(project.id, run_id))
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        return run

    def list(
        self, project: Project, filters: RunFilters, *, cursor: str | None, limit: int
    ) -> Page[Run]:
        if filters.root_only and filters.parent_run_id is not None:
            raise InvalidRequest(
                "root_only and parent_run_id exclude each other; pass one of them",
                field="root_only",
            )
        before = decode_cursor(cursor, key_pattern=RUN_ID_PATTERN) if cursor else None
        with self._auto.connect() as conn:
            found = records.list_runs(conn, project.id, filters, before=before, limit=limit + 1)
        items = found[:limit]
        if len(found) <= limit:
            return Page(items, None)
        return Page(items, encode_cursor(items[-1].created_at, items[-1].run_id))

    def events(self, project: Project, run_id: str, *, after: int, limit: int) -> Page[RunEvent]:
        """Events after ``after``: from SQL once the run is terminal, else from the live stream."""
        run = self.get(project, run_id)
        if run.status.is_terminal:
            with self._auto.connect() as conn:
                found = event_archive.list_events(conn, run.ref, after=after, limit=limit + 1)
        else:
            found = self._events.read(run.ref, after=after, limit=limit + 1)
        items = found[:limit]
        return Page(items, str(items[-1].event_id) if len(found) > limit else None)

    # -- cancelling -----------------------------------------------------------------------

    def cancel(self, project: Project, run_id: str) -> tuple[bool, Run]:
        """Cancel an active run now. Returns (whether this call cancelled it, the run)."""
        return self.cancel_run(self.get(project, run_id))

    def cancel_run(self, run: Run) -> tuple[bool, Run]:
        """Cancel ``run`` (as last read) now, and its active children."""
        if run.status.is_terminal:
            return False, run
        if run.kind is RunKind.EVAL:
            raise Unsupported("eval runs cannot be cancelled", field="run_id")
        ref = run.ref
        # Reserve ids for STEP_FINISHED and RUN_ERROR, and raise the cooperative flag.
        first, so_far = self._events.close(ref, 2, cancel=True)
        now = self._clock()
        error = RunError("Run cancelled", code=ErrorCode.CANCELLED)
        with self._engine.begin() as conn:
            cancelled = transitions.cancel_run(
                conn,
                ref,
                now,
                {"completed_at": now, "updated_at": now, "error": error.to_json()},
            )
            if cancelled is not None:
                final = [ev.terminal_event(RunStatus.CANCELLED.value, error.message)]
                if cancelled.kind is RunKind.WORKFLOW:
                    nodes.cancel_active_nodes(conn, ref, now)
                elif cancelled.started_at is not None:
                    final.insert(0, ev.step_finished_event(cancelled.target, ErrorCode.CANCELLED))
                if cancelled.started_at is not None:
                    ran_ms = duration_ms(cancelled.started_at, now)
                    transitions.set_cancelled_duration(conn, ref, ran_ms)
                    cancelled = replace(cancelled, duration_ms=ran_ms)
                published = ev.numbered(final, first + 2 - len(final), now)
                event_archive.insert_events(conn, ref, [*so_far, *published])
        if cancelled is None:
            # It ended another way meanwhile, whose final events set the expiry of its keys;
            # the close above may have made them again if they had expired already.
            self._events.expire(ref)
            return False, self.load(ref) or run
        self._events.publish(ref, published)
        metrics.run_finished(
            cancelled.target, cancelled.kind.value, RunStatus.CANCELLED.value, cancelled.duration_ms
        )
        self._cancel_children(ref)
        return True, cancelled

    def _cancel_children(self, ref: RunRef) -> None:
        with self._auto.connect() as conn:
            children = records.active_children(conn, ref)
        for child_id in children:
            child = self.load(RunRef(ref.project_id, child_id))
            if child is not None:
                self.cancel_run(child)
