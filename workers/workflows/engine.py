"""The workflow engine: applies the planner's actions and runs steps, one Celery job each.

A job ``workflow:<id>(project_id, run_id)`` re-plans the run; with a third argument, a node id,
it runs that step and then re-plans. Every node change is a conditional update, so concurrent jobs (fan-in)
and redelivered messages cannot start a node twice or revive a finished run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from pydantic import ValidationError

from runs.domain.clock import utcnow
from runs.domain.events import RUN_STARTED, NewEvent
from runs.domain.runs import ErrorCode, Outcome, Run, RunError, RunKind, RunRef, RunStatus
from runs.domain.workflows import NodeRecord, NodeStatus, approval_reason, event_reason
from runs.observability.json_logs import bind_run_fields, run_log_fields
from workers.definitions.dsl import Step, WorkflowDefinition
from workers.execution.results import DROPPED, SKIPPED, ended
from workers.execution.runtime import WorkerRuntime
from workers.workflows.planner import (
    Action,
    Cancel,
    Complete,
    Fail,
    FinishRun,
    Open,
    Park,
    Skip,
    Start,
    context_for,
    plan,
)

log = logging.getLogger(__name__)

MAX_PLANNING_ROUNDS = 500


class WorkflowEngine:
    def __init__(self, runtime: WorkerRuntime) -> None:
        self._rt = runtime
        self._runs = runtime.runs
        self._attempts = runtime.attempts
        self._state = runtime.workflows
        self.continuation: NodeRecord | None = None
        self.continuation_owner = ""  # the token its claim holds the lease with
        self._may_continue = False
        # This job's token for the run-level calls it makes (claim, opening event, finish).
        self._owner = runtime.new_owner()
        # What the last planning pass saw, for the job that goes on with ``continuation``.
        self.planned_run: Run | None = None
        self.planned_nodes: dict[str, NodeRecord] = {}

    # -- planning -------------------------------------------------------------------------

    def advance(
        self,
        ref: RunRef,
        *,
        may_continue: bool = False,
        run: Run | None = None,
        nodes: dict[str, NodeRecord] | None = None,
    ) -> str:
        """Re-plan the run. With ``may_continue`` (the caller is a step's job that has just
        recorded its step), one step the plan starts is left to the caller to run next in
        the same job, as ``continuation`` (claimed already: should the job die, its lease
        lapses and the sweeper sends the step again), instead of a job of its own. A
        caller that read the run already passes it (a cancel since then ended its nodes, so
        the plan starts nothing, and a finish it decides is refused). A caller that knows the
        nodes as they are (``nodes``: no other job could have moved one since) saves the
        first pass its read."""
        self.continuation = None
        self._may_continue = may_continue
        loaded = run is None
        run = run if run is not None else self._runs.load(ref)
        if run is None or run.kind is not RunKind.WORKFLOW or run.status.is_terminal:
            return f"{SKIPPED}: not an active workflow run"
        try:
            definition = self._rt.registry.resolve_workflow(run.target)
        except LookupError as exc:
            claimed = (
                self._attempts.claim(ref, owner=self._owner, lease_seconds=1)
                if run.status is RunStatus.PENDING
                else run
            )
            if claimed is None:
                return f"{SKIPPED}: not pending"
            return self._finish(claimed, _failure(str(exc), ErrorCode.UNKNOWN_TARGET), {})
        if run.status is RunStatus.PENDING:
            started = self._start(run, definition)
            if started is None:
                return f"{SKIPPED}: not pending"
            run = started
        if loaded:  # a job of its own, not a step's: its lines name the run (until it ends)
            bind_run_fields(**run_log_fields(run))
        return self._plan_until_still(run, definition, nodes)

    def _start(self, run: Run, definition: WorkflowDefinition) -> Run | None:
        claimed = self._attempts.claim(
            run.ref,
            owner=self._owner,
            lease_seconds=self._rt.settings.worker_lease_seconds,
        )
        if claimed is None or claimed.status is not RunStatus.RUNNING:
            return None
        started = NewEvent(RUN_STARTED, {"type": RUN_STARTED, "status": "running"})
        if not self._attempts.emit(run.ref, [started], producer=self._owner, sequence="started"):
            return None  # cancelled in the meantime
        if definition.input_model is not None:
            try:
                definition.input_model.model_validate(claimed.input or {})
            except ValidationError as exc:
                message = f"input does not match the workflow's input model: {exc}"
                self._finish(claimed, _failure(message, ErrorCode.INVALID_INPUT), {})
                return None
        self._state.create(claimed.ref, list(definition.nodes))
        if definition.timeout:
            self._state.dispatch(claimed, countdown=definition.timeout)
        return claimed

    def _plan_until_still(
        self, run: Run, definition: WorkflowDefinition, known: dict[str, NodeRecord] | None
    ) -> str:
        nodes: dict[str, NodeRecord] = {}
        for _ in range(MAX_PLANNING_ROUNDS):
            if known:  # the first pass of a caller that knows them
                nodes, known = known, None
            else:
                nodes = self._state.nodes(run.ref)
            if not nodes:  # a job died between claiming the run and creating its nodes
                self._state.create(run.ref, list(definition.nodes))
                continue
            ctx = context_for(run.run_id, run.input, nodes)
            now = utcnow()
            if (
                definition.timeout
                and run.started_at
                and (now - run.started_at).total_seconds() >= definition.timeout
            ):
                message = f"workflow timed out after {definition.timeout} s"
                actions: list[Action] = [_failure(message, ErrorCode.TIMEOUT)]
            else:
                try:
                    actions = plan(definition, nodes, ctx, now)
                except Exception as exc:  # a condition, skip or output callable raised
                    actions = [
                        _failure(f"workflow definition raised: {exc}", ErrorCode.DEFINITION_ERROR)
                    ]
            if not actions:
                break
            moved, only_started = False, True
            for action in actions:
                if isinstance(action, FinishRun):
                    return self._finish(run, action, nodes, definition)
                applied = self._apply(run, action)
                moved = applied or moved
                if isinstance(action, Start) and applied:
                    nodes = {**nodes, action.node_id: self._started(nodes[action.node_id])}
                else:
                    only_started = False
            # Steps that were only started enable nothing until one of them ends, and whoever
            # records that plans again (from the nodes as they are then, including what other
            # jobs did meanwhile): no pass to read the nodes back. Anything else may cascade.
            if not moved or only_started:
                break
        # What the plan left, for the job that goes on with ``continuation``.
        self.planned_run, self.planned_nodes = run, nodes
        self._park_if_only_waiting(run, definition, nodes)
        return "advanced"

    def _apply(self, run: Run, action: Action) -> bool:
        state, ref = self._state, run.ref
        if isinstance(action, Start):
            if self._may_continue and self.continuation is None:
                owner = self._rt.new_owner()
                self.continuation = state.claim(
                    ref,
                    action.node_id,
                    owner=owner,
                    lease_seconds=self._rt.settings.worker_lease_seconds,
                    from_status=NodeStatus.PENDING,
                )
                self.continuation_owner = owner
                return self.continuation is not None
            if state.queue(ref, action.node_id):
                state.dispatch(run, node_id=action.node_id)
                return True
            return False
        if isinstance(action, Skip):
            return state.skip(ref, action.node_id, broken=action.broken)
        if isinstance(action, Park):
            parked = state.park(ref, action.node_id, deadline=action.deadline, event=action.event)
            if parked and action.deadline is not None:
                wait = (action.deadline - utcnow()).total_seconds()
                state.dispatch(run, countdown=max(0.0, wait) + 0.05)
            return parked
        if isinstance(action, Open):
            return state.open(ref, action.node_id, arm=action.arm)
        if isinstance(action, Complete):
            return state.complete(ref, action.node_id, action.output)
        if isinstance(action, Fail):
            return state.fail(ref, action.node_id, action.error)
        if isinstance(action, Cancel):
            return state.cancel(ref, action.node_id)
        raise TypeError(action)

    def _started(self, node: NodeRecord) -> NodeRecord:
        """The node as this pass left it: claimed to go on in this job, or queued."""
        if self.continuation is not None and self.continuation.node_id == node.node_id:
            return self.continuation
        return replace(node, status=NodeStatus.QUEUED)

    def _park_if_only_waiting(
        self, run: Run, definition: WorkflowDefinition, fresh: dict[str, NodeRecord]
    ) -> None:
        """A run whose only live nodes wait on approvals or events is ``waiting``."""
        steps_busy = any(
            n.status in (NodeStatus.QUEUED, NodeStatus.RUNNING)
            and isinstance(definition.nodes[n.node_id].node, Step)
            for n in fresh.values()
        )
        waiting = [n for n in fresh.values() if n.status is NodeStatus.WAITING]
        if waiting and not steps_busy:
            first = waiting[0]
            reason = (
                event_reason(first.wait_event, first.node_id)
                if first.wait_event
                else approval_reason(first.node_id)
            )
            self._state.set_waiting(run.ref, reason)

    def _finish(
        self,
        run: Run,
        action: FinishRun,
        nodes: dict[str, NodeRecord],
        definition: WorkflowDefinition | None = None,
    ) -> str:
        """End the run as the plan decided; what the job returns (``workers.flower_events``)."""
        output, error = action.output, action.error
        if (
            action.status == "completed"
            and definition is not None
            and definition.output_model is not None
        ):
            try:
                output = definition.output_model.model_validate(output).model_dump(mode="json")
            except Exception as exc:
                message = f"the workflow's output does not match its output model: {exc}"
                output, error = None, RunError(message, code=ErrorCode.INVALID_OUTPUT)
        if output is not None:
            try:
                json.dumps(output)
            except (TypeError, ValueError) as exc:
                message = f"the workflow's output is not JSON: {exc}"
                output, error = None, RunError(message, code=ErrorCode.INVALID_OUTPUT)
        failed = error is not None
        outcome = Outcome(
            RunStatus.FAILED if failed else RunStatus.COMPLETED,
            output=None if failed else output,
            error=error,
            logs=_joined_logs(nodes),
            exit_code=1 if failed else 0,
        )
        if self._attempts.finish(run, outcome, owner=self._owner, stop_work=True):
            return ended(outcome)
        return f"{DROPPED}: the run ended another way meanwhile"


def _failure(message: str, code: ErrorCode) -> FinishRun:
    return FinishRun("failed", error=RunError(message, code=code))


def _joined_logs(nodes: dict[str, NodeRecord]) -> str | None:
    lines = [
        f"[{n.node_id}] {line}" for n in nodes.values() if n.logs for line in n.logs.splitlines()
    ]
    return "\n".join(lines) if lines else None
