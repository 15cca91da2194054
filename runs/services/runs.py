"""Use cases of runs that API callers ask for: submit, get, list, events, cancel. Owns the
transactions. Executing and recovering runs is ``attempts``.

Never imports FastAPI, Celery or redis: the dispatcher and event log are handed in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from runs.domain import events as ev
from runs.domain.clock import utcnow
from runs.domain.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RunsError,
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
    check_run_id,
    check_target_matches_kind,
    duration_ms,
    new_run_id,
)
from runs.messaging.routing import Router
from runs.observability import metrics
from runs.persistence import event_archive, nodes, records
from runs.persistence.cursors import decode_cursor, encode_cursor
from runs.persistence.engine import autocommit
from runs.persistence.records import RunFilters
from runs.services.catalog import DefinitionCatalog
from runs.services.ports import Dispatcher, EventLog

log = logging.getLogger(__name__)

T = TypeVar("T")

SUPPORTED_KINDS = frozenset({RunKind.TASK, RunKind.WORKFLOW})


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next: str | None


def _check_kind(kind: RunKind) -> None:
    if kind not in SUPPORTED_KINDS:
        raise Unsupported(
            f"kind {kind.value!r} runs are not supported by this server; "
            "use kind 'task' or 'workflow'",
            field="kind",
        )


def _is_row(run: Run | None, values: dict[str, Any]) -> bool:
    """Whether ``run`` is the new run ``values`` describe: its INSERT landed, and a retry of
    the statement (the connection dropped before its answer) found the id taken."""
    return (
        run is not None
        and run.status is RunStatus.PENDING
        and run.attempt == 0
        and run.created_at == values["created_at"]
    )


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode("utf-8"))


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
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._auto = autocommit(engine)
        self._dispatcher = dispatcher
        self._events = events
        self._router = router
        self._catalog = catalog
        self._max_input_bytes = max_input_bytes
        self._max_timeout_seconds = max_timeout_seconds
        self._clock = clock

    # -- creating -------------------------------------------------------------------------

    def submit(self, project: Project, request: RunRequest) -> tuple[Run, bool]:
        """Accept a run: commit it as pending, then send its job. Returns (run, duplicate)."""
        (accepted,) = self.submit_many([(project, request)])
        if isinstance(accepted, Exception):
            raise accepted
        return accepted

    def submit_many(
        self, requests: Sequence[tuple[Project, RunRequest]]
    ) -> list[tuple[Run, bool] | Exception]:
        """Accept runs together (what ``submit`` does for each): every request is checked on
        its own, and a refused one gets its error while the others go on; the accepted ones
        are committed in one statement, then their jobs are sent. A request whose run id is
        taken (earlier, or by a request before it in this batch) gets the run that holds it,
        as a duplicate."""
        results: list[tuple[Run, bool] | Exception | None] = [None] * len(requests)
        refs: list[RunRef | None] = [None] * len(requests)
        new: dict[RunRef, tuple[int, dict[str, Any]]] = {}  # the first request of each id
        for i, (project, request) in enumerate(requests):
            try:
                values = self._accepted_values(project, request)
            except RunsError as error:
                results[i] = error
                continue
            key = RunRef(project.id, values["run_id"])
            refs[i] = key
            new.setdefault(key, (i, values))
        inserted = self._insert_new([values for _, values in new.values()])
        holders: dict[RunRef, Run | None] = {}  # the runs that hold the ids found taken
        for ref, (i, values) in new.items():
            outcome = inserted.get(ref)
            if isinstance(outcome, Exception):
                results[i] = outcome
            elif outcome:
                results[i] = (self.dispatch_new(values), False)
            else:
                holders[ref] = holder = self.load(ref)
                if _is_row(holder, values):  # a retried INSERT found its own run
                    results[i] = (self.dispatch_new(values), False)
        for i, taken in enumerate(refs):
            if taken is not None and results[i] is None:  # its id was taken
                existing = holders[taken] if taken in holders else self.load(taken)
                gone = NotFound(f"run {taken.run_id!r} not found")  # deleted meanwhile
                results[i] = (existing, True) if existing is not None else gone
        done = [result for result in results if result is not None]
        assert len(done) == len(requests)
        return done

    def _accepted_values(self, project: Project, request: RunRequest) -> dict[str, Any]:
        _check_kind(request.kind)
        if request.owner_kind != "project":
            raise Unsupported("owner.kind must be 'project'", field="owner.kind")
        if request.owner_id not in (project.id, project.slug):
            raise NotFound(f"project {request.owner_id!r} not found", field="owner.id")
        return self.new_run_values(project.id, request)

    def _insert_new(self, rows: list[dict[str, Any]]) -> dict[RunRef, bool | Exception]:
        """Commit new runs in one statement: each run's ref maps to True when it was
        inserted (absent when its id was taken). A conflict other than a taken id (a project
        deleted meanwhile) fails the statement: then each run is inserted on its own, and the
        one that conflicts maps to its error."""
        try:
            with self._auto.connect() as conn:
                return dict.fromkeys(records.insert_new_runs(conn, rows), True)
        except IntegrityError:
            pass
        outcomes: dict[RunRef, bool | Exception] = {}
        for row in rows:
            try:
                with self._auto.connect() as conn:
                    outcomes |= dict.fromkeys(records.insert_new_runs(conn, [row]), True)
            except IntegrityError as error:
                outcomes[RunRef(row["project_id"], row["run_id"])] = error
        return outcomes

    def new_run_values(self, project_id: str, request: RunRequest) -> dict[str, Any]:
        """The row of a new pending run of ``project_id``, checked; not stored yet."""
        _check_kind(request.kind)
        definition_id = check_target_matches_kind(request.kind, request.target)
        if request.kind is RunKind.WORKFLOW and request.workflow_id != definition_id:
            raise InvalidRequest(
                f"request.workflow_id must be {definition_id!r}, the id in the target "
                f"{request.target!r}",
                field="request.workflow_id",
            )
        self._catalog.require(request.target)
        for name in ("config", "input", "metadata"):
            value = getattr(request, name)
            if value is not None and json_size(value) > self._max_input_bytes:
                raise PayloadTooLarge(
                    f"request.{name} is larger than {self._max_input_bytes} bytes as JSON; "
                    "pass a reference to the data instead",
                    field=f"request.{name}",
                )
        limit = self._max_timeout_seconds
        if limit is not None and (request.timeout_seconds or 0) > limit:
            raise InvalidRequest(
                f"request.timeout_seconds may be at most {limit} on this server",
                field="request.timeout_seconds",
            )
        run_id = check_run_id(request.public_id) if request.public_id else new_run_id()
        root_run_id = run_id
        if request.parent_run_id is not None:
            parent = self.load(RunRef(project_id, request.parent_run_id))
            if parent is None:
                raise NotFound(f"run {request.parent_run_id!r} not found")
            root_run_id = parent.root_run_id
        now = self._clock()
        return {
            "run_id": run_id,
            "project_id": project_id,
            "kind": request.kind.value,
            "status": RunStatus.PENDING.value,
            "owner_kind": "project",
            "owner_id": project_id,
            "parent_run_id": request.parent_run_id,
            "root_run_id": root_run_id,
            "name": request.name,
            "metadata": request.metadata,
            "target": request.target,
            "workflow_id": request.workflow_id,
            "schedule_id": request.schedule_id,
            "batch_id": request.batch_id,
            "runtime_target_kind": request.runtime_target_kind,
            "runtime_target_environment_id": request.runtime_target_environment_id,
            "runtime_target_branch_id": request.runtime_target_branch_id,
            "input": request.input,
            "config": request.config,
            "artifacts": [],
            "start_mode": request.start_mode,
            "timeout_seconds": request.timeout_seconds,
            "backoff_limit": request.backoff_limit,
            "trigger_kind": request.trigger_kind,
            "trigger_id": request.trigger_id,
            "queue": self._router.queue_for(request.target),
            "attempt": 0,
            "created_at": now,
            "updated_at": now,
            "available_at": now,
        }

    def dispatch_new(self, values: dict[str, Any]) -> Run:
        """Send the job of a run committed as ``values``. A broker failure leaves the run pending, never lost."""
        metrics.run_created(values["target"], values["kind"])
        try:
            ref = RunRef(values["project_id"], values["run_id"])
            self._dispatcher.dispatch(values["target"], ref, values["queue"], attempt=1)
        except Exception:
            log.exception("dispatch of %s failed; the run stays pending", values["run_id"])
        return records.run_from_row(values | {"lease_owner": None, "lease_expires_at": None})

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
            cancelled = records.cancel_run(
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
                    records.set_cancelled_duration(conn, ref, ran_ms)
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
