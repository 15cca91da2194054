"""Running one workflow step: claim its node (or take it over from a dead worker), call the
task, record the outcome with a retry when the policy allows, then re-plan the run."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from runs.domain.clock import utcnow
from runs.domain.events import STEP_STARTED, step_event
from runs.domain.runs import (
    ErrorCode,
    Lease,
    Outcome,
    Run,
    RunError,
    RunKind,
    RunRef,
    RunRequest,
    RunStatus,
)
from runs.domain.workflows import NodeRecord, NodeStatus
from runs.observability.json_logs import bind_run_fields, run_log_fields
from workers.definitions.dsl import Step, WorkflowDefinition
from workers.definitions.registry import TaskDefinition
from workers.execution.guard import StopReason
from workers.execution.results import DEFERRED, HANDED_BACK, SKIPPED
from workers.execution.runner import AttemptRunner, Ran
from workers.execution.runtime import WorkerRuntime
from workers.workflows.engine import WorkflowEngine
from workers.workflows.planner import WorkflowContext, context_for

log = logging.getLogger(__name__)


# How long one job keeps running the steps that become ready one after the other (a
# sequence) before it sends the next one as a job of its own.
CONTINUE_SECONDS = 5.0


class StepRunner:
    def __init__(self, runtime: WorkerRuntime, engine: WorkflowEngine) -> None:
        self._rt = runtime
        self._runs = runtime.runs
        self._attempts = runtime.attempts
        self._state = runtime.workflows
        self._engine = engine
        self._run: Run | None = None  # the run of the step this job runs
        # The run's nodes once the step ended, when this job knows them without a read.
        self._nodes_after: dict[str, NodeRecord] | None = None

    def run(self, ref: RunRef, node_id: str) -> str:
        """Run the step, re-plan the run, and go on with a step the plan started right after
        (saving the broker's round trip of a sequence); steps that can run beside it are sent
        as jobs, so that other workers take them."""
        deadline = time.monotonic() + CONTINUE_SECONDS
        engine = self._engine
        ended = self._run_step(ref, node_id, None, None, None)
        while ended is None:
            may_continue = time.monotonic() < deadline
            outcome = engine.advance(
                ref, may_continue=may_continue, run=self._run, nodes=self._nodes_after
            )
            claimed = engine.continuation
            if claimed is None:
                return outcome
            ended = self._run_step(
                ref,
                claimed.node_id,
                engine.planned_run,
                engine.planned_nodes,
                (claimed, engine.continuation_owner),
            )
        return ended

    def _advance(self, ref: RunRef) -> str:
        return self._engine.advance(ref)

    def _run_step(
        self,
        ref: RunRef,
        node_id: str,
        run: Run | None,
        known: dict[str, NodeRecord] | None,
        claimed: tuple[NodeRecord, str] | None,
    ) -> str | None:
        """Claim and run one step; ``None`` once its outcome is recorded (re-plan next).

        Given the run and its nodes as the planner just saw them, and the step the planner
        claimed for this job (with the token its claim holds the lease with), it goes on from
        the step before it in the same job."""
        self._nodes_after = None
        if run is None:
            run = self._runs.load(ref)
            if run is None or run.status.is_terminal:
                return f"{SKIPPED}: run ended"
        self._run = run
        bind_run_fields(**run_log_fields(run), node_id=node_id)  # until the job ends
        definition = self._rt.registry.resolve_workflow(run.target)
        step = definition.nodes[node_id].node
        assert isinstance(step, Step)
        node, owner = claimed if claimed is not None else (None, self._rt.new_owner())
        if node is None:
            taken = self._take(run, definition, step, node_id, owner)
            if not isinstance(taken, NodeRecord):
                return taken
            node = taken
        bind_run_fields(attempt=node.attempt)  # the step's attempt
        self._attempts.emit(
            ref,
            [step_event(STEP_STARTED, node_id, "running", node.attempt)],
            producer=owner,
            sequence="started",
        )
        nodes = known if known is not None else self._state.nodes(ref)
        wctx = context_for(run.run_id, run.input, nodes)
        outcome = self._execute(run, definition, step, node, owner, wctx)
        if outcome is None:
            return f"{HANDED_BACK}: the worker is shutting down"
        done = self._record(run, definition, step, node, outcome)
        self._nodes_after = _nodes_after(definition, known, done)
        return None

    def _take(
        self,
        run: Run,
        definition: WorkflowDefinition,
        step: Step,
        node_id: str,
        owner: str,
    ) -> NodeRecord | str | None:
        """Claim the step for this job: the node, or what the job returns instead (None when a
        lost worker's step was failed: re-plan next)."""
        lease = self._rt.settings.worker_lease_seconds
        claim = self._state.claim
        node = claim(run.ref, node_id, owner=owner, lease_seconds=lease)
        if node is not None:
            return node
        # Redelivered after its worker died? Take it over once the dead attempt's lease ends.
        node = claim(
            run.ref, node_id, owner=owner, lease_seconds=lease, from_status=NodeStatus.RUNNING
        )
        if node is None:
            left = self._state.lease_left(run.ref, node_id)
            if left > 0:
                self._state.dispatch(run, node_id=node_id, countdown=left + 0.2)
                return f"{DEFERRED}: the node's lease is still held"
            return f"{SKIPPED}: node not queued"
        retry = step.retry or definition.retry
        if node.attempt <= (retry.max_attempts if retry else 1):
            return node
        lost = Outcome(
            RunStatus.FAILED,
            error=RunError(
                f"the worker running step {node_id!r} was lost", code=ErrorCode.WORKER_LOST
            ),
            exit_code=1,
        )
        self._record(run, definition, step, node, lost, retry_allowed=False)
        return None

    def _execute(
        self,
        run: Run,
        workflow: WorkflowDefinition,
        step: Step,
        node: NodeRecord,
        owner: str,
        wctx: WorkflowContext,
    ) -> Outcome | None:
        """The step's outcome; None when it was handed back (the worker is shutting down)."""
        try:
            config = step.input(wctx) if callable(step.input) else step.input
        except Exception as exc:
            return Outcome(
                RunStatus.FAILED,
                error=RunError(f"step input raised: {exc}", code=ErrorCode.INVALID_INPUT),
                exit_code=1,
            )
        runner = self._runner(run, step, node, owner, config, wctx)
        what = f"step {step.id!r}"

        def abandon(reason: StopReason) -> None:
            if reason is StopReason.TIMEOUT:  # the step ignored its stop: record it, move on
                self._record(run, workflow, step, node, runner.timed_out(what))
                self._advance(run.ref)
            elif reason is StopReason.DRAIN:
                self._state.hand_back(run, node.node_id, attempt=node.attempt)

        def conclude(ran: Ran) -> Outcome | None:
            outcome = ran.outcome
            assert outcome is not None  # a step has no opening that a cancel could refuse
            if ran.reason is StopReason.TIMEOUT and outcome.status is not RunStatus.COMPLETED:
                return runner.timed_out(what)
            if ran.reason is StopReason.DRAIN and outcome.status is not RunStatus.COMPLETED:
                self._state.hand_back(run, node.node_id, attempt=node.attempt)
                return None  # the step goes to another worker; nothing to record
            return outcome

        lease = self._rt.settings.worker_lease_seconds
        return runner.run(
            renew=lambda: (
                Lease.HELD
                if self._state.renew(run.ref, node.node_id, node.attempt, lease)
                else Lease.LOST
            ),
            abandon=abandon,
            conclude=conclude,
        )

    def _runner(
        self,
        run: Run,
        step: Step,
        node: NodeRecord,
        owner: str,
        config: Any,
        wctx: WorkflowContext,
    ) -> AttemptRunner:
        """The attempt runner of a step: its task (or function), config and timeout."""
        definition = (
            self._rt.registry.resolve(f"task:{step.task}")
            if step.task is not None
            else TaskDefinition(id=step.id, fn=step.fn)  # type: ignore[arg-type]
        )
        settings = self._rt.settings
        return AttemptRunner(
            self._rt,
            run,
            definition,
            owner=owner,
            attempt=node.attempt,
            config=config,
            timeout_seconds=min(
                step.timeout or definition.timeout_seconds or settings.max_timeout_seconds,
                settings.max_timeout_seconds,
            ),
            node_id=node.node_id,
            results=dict(wctx.results),
            start_child=lambda target, cfg, name: self._start_child(run, target, cfg, name),
        )

    def _record(
        self,
        run: Run,
        definition: WorkflowDefinition,
        step: Step,
        node: NodeRecord,
        outcome: Outcome,
        *,
        retry_allowed: bool = True,
    ) -> NodeRecord | None:
        """Record the step's outcome; the node as it now is when it completed, else None."""
        logs = "\n".join(x for x in (node.logs, outcome.logs) if x) or None
        ref, node_id, attempt = run.ref, node.node_id, node.attempt
        if outcome.status is RunStatus.COMPLETED:
            if not self._state.complete(ref, node_id, outcome.output, attempt=attempt, logs=logs):
                return None
            return replace(
                node,
                status=NodeStatus.COMPLETED,
                output=outcome.output,
                error=None,
                logs=logs,
                completed_at=utcnow(),
            )
        error = outcome.error or RunError("step failed")
        retry = (step.retry or definition.retry) if retry_allowed else None
        if (
            outcome.status is RunStatus.FAILED
            and retry is not None
            and attempt < retry.max_attempts
        ):
            if self._state.requeue(ref, node_id, attempt=attempt, error=error, logs=logs):
                self._state.dispatch(run, node_id=node_id, countdown=retry.delay(attempt))
            return None
        cancelled = outcome.status is RunStatus.CANCELLED
        status = NodeStatus.CANCELLED if cancelled else NodeStatus.FAILED
        self._state.fail(ref, node_id, error, attempt=attempt, logs=logs, status=status)
        return None

    def _start_child(self, run: Run, target: str, config: Any, name: str | None) -> str:
        project = self._rt.access.find_project(run.project_id)
        child, _ = self._runs.create(
            project,
            RunRequest(
                kind=RunKind.TASK,
                owner_kind="project",
                owner_id=project.id,
                target=target,
                config=config,
                name=name,
                parent_run_id=run.run_id,
                trigger_kind=None,
            ),
        )
        return child.run_id


def _nodes_after(
    definition: WorkflowDefinition, known: dict[str, NodeRecord] | None, done: NodeRecord | None
) -> dict[str, NodeRecord] | None:
    """The run's nodes once the step ``done`` completed, without reading them back, when no
    other job could have moved one since the plan that started it: no other step was queued
    or running and no node waited on an approval or an event. (Groups are moved only by
    plans, and a cancel or a run's timeout ends the run: every later transition is refused.)
    Else None: the next plan reads them."""
    if known is None or done is None:
        return None
    for node_id, node in known.items():
        if node_id == done.node_id:
            continue
        if node.status in (NodeStatus.QUEUED, NodeStatus.WAITING):
            return None
        if node.status is NodeStatus.RUNNING and isinstance(definition.nodes[node_id].node, Step):
            return None
    return {**known, done.node_id: done}
