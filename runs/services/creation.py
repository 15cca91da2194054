"""The one way a run comes to be, whoever asks for it (``POST /runs``, a schedule's firing, a
schedule triggered now, a task starting a child run):

1. ``prepare``: the request is checked (kind, target, sizes, limits, parent) and becomes the
   run as it will be stored, a frozen ``Run`` (pending, attempt 0);
2. ``insert``: it is committed as ``pending`` (``persistence.records.insert_runs``, in the
   caller's transaction when it has one, as a firing has);
3. ``send``: after the commit its job goes to the broker. A broker failure leaves the run
   pending; the sweeper sends it later. A run is never sent before it is committed. Runs
   committed together travel together: one job for the runs of one target (``send_many``).

``create_many`` does all three for requests that arrive together: one statement and one commit
for all of them, each request with its own answer or error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from runs.domain.clock import utcnow
from runs.domain.errors import InvalidRequest, NotFound, PayloadTooLarge, RunsError, Unsupported
from runs.domain.projects import Project
from runs.domain.runs import (
    Run,
    RunKind,
    RunRef,
    RunRequest,
    RunStatus,
    check_run_id,
    check_target_matches_kind,
    new_run_id,
)
from runs.messaging.routing import Router
from runs.observability import metrics
from runs.persistence import records
from runs.persistence.engine import autocommit
from runs.services.catalog import DefinitionCatalog
from runs.services.ports import Dispatcher

log = logging.getLogger(__name__)

SUPPORTED_KINDS = frozenset({RunKind.TASK, RunKind.WORKFLOW})

Created = tuple[Run, bool]  # the run, and whether its id was taken already (a duplicate)


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode("utf-8"))


class RunCreation:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        dispatcher: Dispatcher,
        router: Router,
        catalog: DefinitionCatalog,
        max_input_bytes: int,
        max_timeout_seconds: int | None = None,
        group_size: int = 1,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._auto = autocommit(engine)
        self._group_size = max(group_size, 1)
        self._dispatcher = dispatcher
        self._router = router
        self._catalog = catalog
        self._max_input_bytes = max_input_bytes
        self._max_timeout_seconds = max_timeout_seconds
        self._clock = clock

    # -- the three steps ------------------------------------------------------------------

    def prepare(self, project_id: str, request: RunRequest) -> Run:
        """The run ``request`` asks for, checked, as it will be stored; not stored yet."""
        self._check(request)
        run_id = check_run_id(request.public_id) if request.public_id else new_run_id()
        root_run_id = run_id
        if request.parent_run_id is not None:
            parent = self._load(RunRef(project_id, request.parent_run_id))
            if parent is None:
                raise NotFound(f"run {request.parent_run_id!r} not found")
            root_run_id = parent.root_run_id
        now = self._clock()
        return Run(
            run_id=run_id,
            project_id=project_id,
            kind=request.kind,
            status=RunStatus.PENDING,
            owner_kind="project",
            owner_id=project_id,
            parent_run_id=request.parent_run_id,
            root_run_id=root_run_id,
            name=request.name,
            metadata=request.metadata,
            target=request.target,
            workflow_id=request.workflow_id,
            schedule_id=request.schedule_id,
            batch_id=request.batch_id,
            runtime_target_kind=request.runtime_target_kind,
            runtime_target_environment_id=request.runtime_target_environment_id,
            runtime_target_branch_id=request.runtime_target_branch_id,
            input=request.input,
            config=request.config,
            start_mode=request.start_mode,
            timeout_seconds=request.timeout_seconds,
            backoff_limit=request.backoff_limit,
            trigger_kind=request.trigger_kind,
            trigger_id=request.trigger_id,
            queue=self._router.queue_for(request.target),
            created_at=now,
            updated_at=now,
            available_at=now,
        )

    def insert(self, conn: sa.Connection, runs: Sequence[Run]) -> set[RunRef]:
        """Store prepared runs in the caller's transaction; the ones inserted (a run whose id
        its project holds already is skipped)."""
        return records.insert_runs(conn, runs)

    def send(self, run: Run) -> Run:
        """Send the job of a run committed as pending. A broker failure leaves it pending,
        never lost."""
        self.send_many([run])
        return run

    def send_many(self, runs: Sequence[Run]) -> None:
        """Send the jobs of runs committed together: the runs of one target and queue travel
        in one job (at most ``group_size`` a job); a lone run goes alone. A broker failure
        leaves its runs pending, never lost (the sweeper sends them later)."""
        together: dict[tuple[str, str], list[Run]] = {}
        for run in runs:
            metrics.run_created(run.target, run.kind.value)
            together.setdefault((run.target, run.queue), []).append(run)
        for (target, queue), group in together.items():
            jobs = [(run.ref, 1) for run in group]
            send_jobs(self._dispatcher, target, queue, jobs, self._group_size)

    # -- requests that arrive together ----------------------------------------------------

    def create_many(
        self, requests: Sequence[tuple[Project, RunRequest]]
    ) -> list[Created | Exception]:
        """Create runs together: every request is checked on its own, and a refused one gets
        its error while the others go on; the accepted ones are committed in one statement,
        then their jobs are sent. A request whose run id is taken (earlier, or by a request
        before it in this batch) gets the run that holds it, as a duplicate."""
        results: list[Created | Exception | None] = [None] * len(requests)
        refs: list[RunRef | None] = [None] * len(requests)
        new: dict[RunRef, tuple[int, Run]] = {}  # the first request of each id
        for i, (project, request) in enumerate(requests):
            try:
                run = self._accepted(project, request)
            except RunsError as error:
                results[i] = error
                continue
            refs[i] = run.ref
            new.setdefault(run.ref, (i, run))
        holders = self._commit_and_send(new, results)
        for i, taken in enumerate(refs):
            if taken is not None and results[i] is None:  # its id was taken
                existing = holders[taken] if taken in holders else self._load(taken)
                gone = NotFound(f"run {taken.run_id!r} not found")  # deleted meanwhile
                results[i] = (existing, True) if existing is not None else gone
        done = [result for result in results if result is not None]
        assert len(done) == len(requests)
        return done

    def _commit_and_send(
        self, new: dict[RunRef, tuple[int, Run]], results: list[Created | Exception | None]
    ) -> dict[RunRef, Run | None]:
        """Insert the new runs, send those inserted; the runs that hold the ids found taken."""
        inserted = self._insert_new([run for _, run in new.values()])
        holders: dict[RunRef, Run | None] = {}
        accepted: list[Run] = []
        for ref, (i, run) in new.items():
            outcome = inserted.get(ref)
            if isinstance(outcome, Exception):
                results[i] = outcome
                continue
            if not outcome:
                holders[ref] = holder = self._load(ref)
                if not _is_same(holder, run):
                    continue
                # else a retried INSERT found its own run
            results[i] = (run, False)
            accepted.append(run)
        self.send_many(accepted)
        return holders

    def _insert_new(self, runs: list[Run]) -> dict[RunRef, bool | Exception]:
        """Commit new runs in one statement: each run's ref maps to True when it was
        inserted (absent when its id was taken). A conflict other than a taken id (a project
        deleted meanwhile) fails the statement: then each run is inserted on its own, and the
        one that conflicts maps to its error."""
        try:
            with self._auto.connect() as conn:
                return dict.fromkeys(records.insert_runs(conn, runs), True)
        except IntegrityError:
            pass
        outcomes: dict[RunRef, bool | Exception] = {}
        for run in runs:
            try:
                with self._auto.connect() as conn:
                    outcomes |= dict.fromkeys(records.insert_runs(conn, [run]), True)
            except IntegrityError as error:
                outcomes[run.ref] = error
        return outcomes

    # -- checks ---------------------------------------------------------------------------

    def _accepted(self, project: Project, request: RunRequest) -> Run:
        _check_kind(request.kind)
        if request.owner_kind != "project":
            raise Unsupported("owner.kind must be 'project'", field="owner.kind")
        if request.owner_id not in (project.id, project.slug):
            raise NotFound(f"project {request.owner_id!r} not found", field="owner.id")
        return self.prepare(project.id, request)

    def _check(self, request: RunRequest) -> None:
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

    def _load(self, ref: RunRef) -> Run | None:
        with self._auto.connect() as conn:
            return records.get_run(conn, ref)


def _check_kind(kind: RunKind) -> None:
    if kind not in SUPPORTED_KINDS:
        raise Unsupported(
            f"kind {kind.value!r} runs are not supported by this server; "
            "use kind 'task' or 'workflow'",
            field="kind",
        )


def _is_same(stored: Run | None, prepared: Run) -> bool:
    """Whether ``stored`` is the run ``prepared`` describes: its INSERT landed, and a retry of
    the statement (the connection dropped before its answer) found the id taken."""
    return (
        stored is not None
        and stored.status is RunStatus.PENDING
        and stored.attempt == 0
        and stored.created_at == prepared.created_at
    )


def send_jobs(
    dispatcher: Dispatcher,
    target: str,
    queue: str,
    jobs: Sequence[tuple[RunRef, int]],
    size: int,
) -> None:
    """Send the jobs of runs (each with its attempt), ``size`` runs a job at most; a lone run
    goes alone. A broker failure leaves the runs pending, never lost (the sweeper sends them
    later)."""
    for start in range(0, len(jobs), size):
        chunk = jobs[start : start + size]
        try:
            if len(chunk) == 1:
                dispatcher.dispatch(target, chunk[0][0], queue, attempt=chunk[0][1])
            else:
                dispatcher.dispatch_group(target, chunk, queue)
        except Exception:
            log.exception("dispatch of %d runs failed; they stay pending", len(chunk))
