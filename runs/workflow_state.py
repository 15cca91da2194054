"""Use cases on workflow nodes: create, read, move, and resume waits (approvals, signals).

The engine (workers) plans; this module owns the node transactions and their events, and
the API uses it to resume parked runs, after which a job re-plans the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from runs.domain.clock import utcnow
from runs.domain.errors import Conflict
from runs.domain.events import STEP_FINISHED, NewEvent
from runs.domain.projects import Project
from runs.domain.runs import Run, RunKind, RunRef
from runs.domain.workflows import NodeRecord, NodeStatus
from runs.persistence import nodes
from runs.persistence.engine import autocommit
from runs.ports import Dispatcher, EventLog
from runs.service import RunService


def step_event(event_type: str, node_id: str, status: str, attempt: int, **extra: Any) -> NewEvent:
    payload = {"type": event_type, "stepName": node_id, "status": status, "attempt": attempt}
    return NewEvent(event_type, {**payload, **extra})


class WorkflowState:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        runs: RunService,
        events: EventLog,
        dispatcher: Dispatcher,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._auto = autocommit(engine)
        self._runs = runs
        self._events = events
        self._dispatcher = dispatcher
        self._clock = clock

    # -- for the engine -------------------------------------------------------------------

    def create(self, ref: RunRef, node_ids: Sequence[str]) -> None:
        with self._engine.begin() as conn:
            nodes.insert_nodes(conn, ref, node_ids, self._clock())

    def nodes(self, ref: RunRef) -> dict[str, NodeRecord]:
        with self._auto.connect() as conn:
            return nodes.get_nodes(conn, ref)

    def move(
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
        with self._auto.connect() as conn:
            moved = nodes.transition(
                conn,
                ref,
                node_id,
                from_statuses,
                {"updated_at": self._clock(), **values},
                attempt=attempt,
            )
        if moved and event is not None:
            self._events.append(ref, [event])
        return moved

    def claim(
        self, ref: RunRef, node_id: str, *, worker: str, lease_seconds: float, reclaim: bool = False
    ) -> NodeRecord | None:
        """Take a queued node (or, with ``reclaim``, one whose worker's lease expired)."""
        now = self._clock()
        with self._auto.connect() as conn:
            return nodes.claim_node(
                conn,
                ref,
                node_id,
                now=now,
                worker=worker,
                lease_until=now + timedelta(seconds=lease_seconds),
                reclaim=reclaim,
            )

    def renew(self, ref: RunRef, node_id: str, attempt: int, lease_seconds: float) -> bool:
        with self._auto.connect() as conn:
            return nodes.renew_node_lease(
                conn, ref, node_id, attempt, self._clock() + timedelta(seconds=lease_seconds)
            )

    def lease_left(self, ref: RunRef, node_id: str) -> float:
        """Seconds until a running node's lease expires (0 when it has)."""
        with self._auto.connect() as conn:
            until = nodes.lease_of(conn, ref, node_id)
        return max(0.0, (until - self._clock()).total_seconds()) if until else 0.0

    def stop_node(self, ref: RunRef, node_id: str) -> None:
        """Tell the worker running this node to stop (its result would be discarded)."""
        self._events.request_stop(ref, node_id)

    def set_waiting(self, ref: RunRef, reason: str | None) -> bool:
        with self._auto.connect() as conn:
            return nodes.set_run_waiting(conn, ref, reason, self._clock())

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

    def redispatch_stale(self, *, older_than_seconds: float, limit: int = 200) -> int:
        """Re-send the jobs of nodes queued too long (a job lost between the node's move to
        ``queued`` and its send) and of running nodes whose worker's lease ran out (the job
        then takes the node over). A duplicate is dropped by the conditional node claim."""
        now = self._clock()
        before = now - timedelta(seconds=older_than_seconds)
        with self._auto.connect() as conn:
            stale = nodes.stale_nodes(conn, before, now, limit)
        sent = 0
        for ref, node_id, target, queue in stale:
            with self._auto.connect() as conn:
                if not nodes.touch_stale(conn, ref, node_id, before, now):
                    continue
            self._dispatcher.dispatch(target, ref, queue, node_id=node_id)
            sent += 1
        return sent

    # -- for the API ----------------------------------------------------------------------

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
        now = self._clock()
        if approved:
            values: dict[str, Any] = {
                "status": NodeStatus.COMPLETED,
                "output": {"approved": True, "comment": comment},
            }
        else:
            values = {
                "status": NodeStatus.FAILED,
                "error": {
                    "message": f"approval {node_id!r} was rejected"
                    + (f": {comment}" if comment else ""),
                    "code": "rejected",
                },
            }
        status = values["status"].value
        self._resume(run, node, {**values, "completed_at": now}, status)
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
        now = self._clock()
        resumed = []
        for node in waiting:
            values = {"status": NodeStatus.COMPLETED, "output": payload, "completed_at": now}
            if self._resume(run, node, values, "completed", dispatch=False):
                resumed.append(node.node_id)
        if resumed:
            self.dispatch(run)  # one re-plan for every node this event resumed
        return resumed

    def _waiting_node(self, project: Project, run_id: str, node_id: str) -> tuple[Run, NodeRecord]:
        run = self._runs.get(project, run_id)
        node = self.nodes(run.ref).get(node_id) if run.kind is RunKind.WORKFLOW else None
        if run.status.is_terminal or node is None or node.status is not NodeStatus.WAITING:
            raise Conflict(f"run {run_id!r} is not waiting at node {node_id!r}", field="node_id")
        return run, node

    def _resume(
        self,
        run: Run,
        node: NodeRecord,
        values: Mapping[str, Any],
        status: str,
        *,
        dispatch: bool = True,
    ) -> bool:
        moved = self.move(
            run.ref,
            node.node_id,
            [NodeStatus.WAITING],
            values,
            event=step_event(STEP_FINISHED, node.node_id, status, node.attempt),
        )
        if moved:
            self.set_waiting(run.ref, None)
            if dispatch:
                self.dispatch(run)  # the engine re-plans the run
        return moved
