"""Use cases on workflow nodes: create, read, move, and resume waits (approvals, signals).

The engine (workers) plans; this module owns the node transactions and their events, and
the API uses it to resume parked runs, after which a job re-plans the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.domain.errors import Conflict
from runs.domain.events import STEP_FINISHED, STEP_STARTED, NewEvent, step_event
from runs.domain.projects import Project
from runs.domain.runs import ErrorCode, Run, RunError, RunKind, RunRef
from runs.domain.workflows import NODE_ACTIVE, NodeRecord, NodeStatus
from runs.persistence import nodes
from runs.persistence.engine import autocommit
from runs.services.ports import Dispatcher, EventLog
from runs.services.runs import RunService
from runs.services.transient import patiently

T = TypeVar("T")


class WorkflowService:
    """``patience``: how long each node transition keeps trying while storage is unreachable
    (``runs.services.transient.patiently``; the worker's wiring sets it, the API's leaves 0). Every
    transition is safe to repeat after its answer was lost: the retry finds the node as it
    wrote it (same status, same ``updated_at``), reports it moved, and appends its event once."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        runs: RunService,
        events: EventLog,
        dispatcher: Dispatcher,
        clock: Callable[[], datetime] = utcnow,
        patience: float = 0.0,
    ) -> None:
        self._engine = engine
        self._auto = autocommit(engine)
        self._runs = runs
        self._events = events
        self._dispatcher = dispatcher
        self._clock = clock
        self._patience = patience

    def _patiently(self, call: Callable[[], T]) -> T:
        return patiently(call, self._patience)

    # -- for the engine -------------------------------------------------------------------

    def create(self, ref: RunRef, node_ids: Sequence[str]) -> None:
        """Create the run's nodes once (a repeat finds them and changes nothing)."""

        def create_once() -> None:
            with self._engine.begin() as conn:
                nodes.insert_nodes(conn, ref, node_ids, self._clock())

        self._patiently(create_once)

    def nodes(self, ref: RunRef) -> dict[str, NodeRecord]:
        def read() -> dict[str, NodeRecord]:
            with self._auto.connect() as conn:
                return nodes.get_nodes(conn, ref)

        return self._patiently(read)

    # -- node transitions: each a conditional update, and its event once it happened -------

    def queue(self, ref: RunRef, node_id: str) -> bool:
        """pending -> queued: its job is about to be sent."""
        return self._move(ref, node_id, [NodeStatus.PENDING], {"status": NodeStatus.QUEUED})

    def skip(self, ref: RunRef, node_id: str, *, broken: bool) -> bool:
        """pending -> skipped (its branch was not taken), or cancelled when ``broken`` (a node
        it depends on failed)."""
        status = NodeStatus.CANCELLED if broken else NodeStatus.SKIPPED
        return self._move(
            ref,
            node_id,
            [NodeStatus.PENDING],
            {"status": status, "completed_at": self._clock()},
            event=step_event(STEP_FINISHED, node_id, status.value, 0),
        )

    def park(
        self, ref: RunRef, node_id: str, *, deadline: datetime | None, event: str | None
    ) -> bool:
        """pending -> waiting for an approval, or for ``event``, until ``deadline``."""
        return self._move(
            ref,
            node_id,
            [NodeStatus.PENDING],
            {
                "status": NodeStatus.WAITING,
                "deadline": deadline,
                "wait_event": event,
                "started_at": self._clock(),
            },
            event=step_event(STEP_STARTED, node_id, "waiting", 0),
        )

    def open(self, ref: RunRef, node_id: str, *, arm: str | None) -> bool:
        """pending -> running, for a group (parallel, branch: ``arm`` names the branch taken)."""
        extra = {"arm": arm} if arm else {}
        return self._move(
            ref,
            node_id,
            [NodeStatus.PENDING],
            {"status": NodeStatus.RUNNING, "arm": arm, "started_at": self._clock()},
            event=step_event(STEP_STARTED, node_id, "running", 0, **extra),
        )

    def complete(
        self,
        ref: RunRef,
        node_id: str,
        output: Any,
        *,
        attempt: int | None = None,
        logs: str | None = None,
        waiting: bool = False,
    ) -> bool:
        """running (or, with ``waiting``, parked) -> completed with ``output``; ``attempt``
        names the step's attempt that ran it."""
        values: dict[str, Any] = {
            "status": NodeStatus.COMPLETED,
            "output": output,
            "completed_at": self._clock(),
        }
        if attempt is not None:
            values |= {"logs": logs, "error": None}
        return self._move(
            ref,
            node_id,
            [NodeStatus.WAITING if waiting else NodeStatus.RUNNING],
            values,
            attempt=attempt,
            event=step_event(STEP_FINISHED, node_id, "completed", attempt or 0),
        )

    def fail(
        self,
        ref: RunRef,
        node_id: str,
        error: RunError,
        *,
        attempt: int | None = None,
        logs: str | None = None,
        status: NodeStatus = NodeStatus.FAILED,
    ) -> bool:
        """running or parked -> failed (or cancelled: a step whose run was cancelled)."""
        values: dict[str, Any] = {
            "status": status,
            "error": error.to_json(),
            "completed_at": self._clock(),
        }
        if attempt is not None:
            values["logs"] = logs
        return self._move(
            ref,
            node_id,
            [NodeStatus.RUNNING, NodeStatus.WAITING],
            values,
            attempt=attempt,
            event=step_event(
                STEP_FINISHED, node_id, status.value, attempt or 0, message=error.message
            ),
        )

    def requeue(
        self, ref: RunRef, node_id: str, *, attempt: int, error: RunError, logs: str | None
    ) -> bool:
        """running -> queued for another attempt of the step (its job is sent after a delay)."""
        return self._move(
            ref,
            node_id,
            [NodeStatus.RUNNING],
            {"status": NodeStatus.QUEUED, "error": error.to_json(), "logs": logs},
            attempt=attempt,
            event=step_event(
                STEP_FINISHED,
                node_id,
                "failed",
                attempt,
                retrying=True,
                message=error.message,
            ),
        )

    def hand_back(self, run: Run, node_id: str, *, attempt: int) -> bool:
        """running -> queued at once, the attempt not counted, and its job sent again: the
        worker running the step is shutting down and the step did not end in its drain time."""
        moved = self._move(
            run.ref,
            node_id,
            [NodeStatus.RUNNING],
            {
                "status": NodeStatus.QUEUED,
                "attempt": attempt - 1,
                "lease_owner": None,
                "lease_expires_at": None,
            },
            attempt=attempt,
            event=step_event(STEP_FINISHED, node_id, "handed_back", attempt),
        )
        if moved:
            self.dispatch(run, node_id=node_id)
        return moved

    def cancel(self, ref: RunRef, node_id: str) -> bool:
        """queued, running or parked -> cancelled (a race's losers, a group given up); the
        worker running it is told to stop."""
        cancelled = self._move(
            ref,
            node_id,
            NODE_ACTIVE,
            {"status": NodeStatus.CANCELLED, "completed_at": self._clock()},
            event=step_event(STEP_FINISHED, node_id, "cancelled", 0),
        )
        if cancelled:
            self._events.request_stop(ref, node_id)
        return cancelled

    def _move(
        self,
        ref: RunRef,
        node_id: str,
        from_statuses: Iterable[NodeStatus],
        values: Mapping[str, Any],
        *,
        attempt: int | None = None,
        event: NewEvent | None = None,
    ) -> bool:
        """Conditionally move a node; emit ``event`` only when this call moved it."""
        now = self._clock()
        values = {"updated_at": now, **values}

        def move_once() -> bool:
            with self._auto.connect() as conn:
                if nodes.transition(conn, ref, node_id, from_statuses, values, attempt=attempt):
                    return True
                # Not moved now; moved by this call's earlier try whose answer was lost?
                return nodes.moved_as(conn, ref, node_id, values)

        moved = self._patiently(move_once)
        if moved and event is not None:
            self._patiently(
                lambda: self._events.append(
                    ref, [event], producer=f"node:{node_id}", sequence=now.isoformat()
                )
            )
        return moved

    def claim(
        self,
        ref: RunRef,
        node_id: str,
        *,
        owner: str,
        lease_seconds: float,
        from_status: NodeStatus = NodeStatus.QUEUED,
    ) -> NodeRecord | None:
        """Take a step for one attempt, its lease held by ``owner`` (a token unique to this
        claim): queued (its job arrived), pending (the job of the step before goes on with
        it), or running on a lapsed lease (its worker died). Lost answer: the claim that took
        effect is found by its owner and answered again."""

        def claim_once() -> NodeRecord | None:
            now = self._clock()
            with self._auto.connect() as conn:
                claimed = nodes.claim_node(
                    conn,
                    ref,
                    node_id,
                    now=now,
                    worker=owner,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    from_status=from_status,
                )
                return claimed or nodes.claimed_by(conn, ref, node_id, owner)

        return self._patiently(claim_once)

    def renew(self, ref: RunRef, node_id: str, attempt: int, lease_seconds: float) -> bool:
        with self._auto.connect() as conn:
            return nodes.renew_node_lease(
                conn, ref, node_id, attempt, self._clock() + timedelta(seconds=lease_seconds)
            )

    def lease_left(self, ref: RunRef, node_id: str) -> float:
        """Seconds until a running node's lease expires (0 when it has)."""

        def read() -> datetime | None:
            with self._auto.connect() as conn:
                return nodes.lease_of(conn, ref, node_id)

        until = self._patiently(read)
        return max(0.0, (until - self._clock()).total_seconds()) if until else 0.0

    def set_waiting(self, ref: RunRef, reason: str | None) -> bool:
        """running <-> waiting (``None`` resumes); a repeat changes nothing."""
        now = self._clock()

        def set_once() -> bool:
            with self._auto.connect() as conn:
                return nodes.set_run_waiting(conn, ref, reason, now)

        return self._patiently(set_once)

    def dispatch(
        self,
        run: Run,
        *,
        node_id: str | None = None,
        countdown: float | None = None,
    ) -> None:
        self._dispatcher.dispatch(
            run.target, run.ref, run.queue, node_id=node_id, countdown=countdown
        )

    # -- for the API ----------------------------------------------------------------------

    def nodes_of(self, project: Project, run_id: str) -> list[NodeRecord]:
        """The nodes of a run of the caller's project, in plan order (none for a task run)."""
        run = self._runs.get(project, run_id)
        if run.kind is not RunKind.WORKFLOW:
            return []
        return list(self.nodes(run.ref).values())

    def approve(
        self, project: Project, run_id: str, node_id: str, *, approved: bool, comment: str | None
    ) -> Run:
        run, node = self._waiting_node(project, run_id, node_id)
        if node.wait_event is not None:
            raise Conflict(
                f"node {node_id!r} waits for the event {node.wait_event!r}, not an approval; "
                "send it to /signals",
                field="node_id",
            )
        if approved:
            moved = self.complete(
                run.ref, node_id, {"approved": True, "comment": comment}, waiting=True
            )
        else:
            reason = f"approval {node_id!r} was rejected" + (f": {comment}" if comment else "")
            moved = self.fail(run.ref, node_id, RunError(reason, code=ErrorCode.REJECTED))
        if moved:
            self._resumed(run)
        return self._runs.get(project, run_id)

    def signal(self, project: Project, run_id: str, event: str, payload: Any) -> list[str]:
        """Complete every node of the run waiting for ``event``; returns their ids."""
        run = self._runs.get(project, run_id)
        waiting = [
            n
            for n in self.nodes(run.ref).values()
            if n.status is NodeStatus.WAITING and n.wait_event == event
        ]
        if run.kind is not RunKind.WORKFLOW or run.status.is_terminal or not waiting:
            raise Conflict(f"run {run_id!r} is not waiting for the event {event!r}", field="event")
        resumed = [
            node.node_id
            for node in waiting
            if self.complete(run.ref, node.node_id, payload, waiting=True)
        ]
        if resumed:
            self._resumed(run)  # one re-plan for every node this event resumed
        return resumed

    def _waiting_node(self, project: Project, run_id: str, node_id: str) -> tuple[Run, NodeRecord]:
        run = self._runs.get(project, run_id)
        node = self.nodes(run.ref).get(node_id) if run.kind is RunKind.WORKFLOW else None
        if run.status.is_terminal or node is None or node.status is not NodeStatus.WAITING:
            raise Conflict(f"run {run_id!r} is not waiting at node {node_id!r}", field="node_id")
        return run, node

    def _resumed(self, run: Run) -> None:
        """A wait of the run ended: it runs again, and a job re-plans it."""
        self.set_waiting(run.ref, None)
        self.dispatch(run)
