"""The workflow engine: applies the planner's actions and runs steps, one Celery job each.

A job ``workflow:<id>(run_id)`` re-plans the run; ``workflow:<id>(run_id, node_id)`` runs one
step and then re-plans. Every node change is a conditional update, so concurrent jobs (fan-in)
and redelivered messages cannot start a node twice or revive a finished run.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from runs.domain.clock import utcnow
from runs.domain.events import RUN_STARTED, STEP_FINISHED, STEP_STARTED, NewEvent
from runs.domain.runs import Outcome, Run, RunError, RunKind, RunRequest, RunStatus
from runs.domain.workflows import NODE_ACTIVE, NodeRecord, NodeStatus, approval_reason, event_reason
from runs.workflow_state import step_event
from workers.adapters import run_in_process
from workers.context import TaskContext
from workers.dsl import Step, WorkflowDefinition
from workers.registry import TaskDefinition
from workers.runtime import WorkerRuntime
from workers.workflows import (
    Action,
    Cancel,
    Complete,
    Fail,
    FinishRun,
    Open,
    Park,
    Skip,
    Start,
    WorkflowContext,
    context_for,
    plan,
)

log = logging.getLogger(__name__)

MAX_PLANNING_ROUNDS = 500


class WorkflowEngine:
    def __init__(self, runtime: WorkerRuntime) -> None:
        self._rt = runtime
        self._runs = runtime.service
        self._state = runtime.workflows

    # -- planning -------------------------------------------------------------------------

    def advance(self, run_id: str) -> str:
        run = self._runs.load(run_id)
        if run is None or run.kind is not RunKind.WORKFLOW:
            return "skipped: not a workflow run"
        if run.status is RunStatus.PENDING:
            started = self._start(run)
            if started is None:
                return "skipped: not pending"
            run = started
        if run.status.is_terminal:
            return "skipped: terminal"
        try:
            definition = self._rt.registry.resolve_workflow(run.target)
        except LookupError as exc:
            self._finish(
                run, FinishRun("failed", error={"message": str(exc), "code": "unknown_target"}), {}
            )
            return "failed: unknown target"
        if not self._state.nodes(run.run_id):  # a job died between claiming and creating them
            self._state.create(run.run_id, list(definition.nodes))
        return self._plan_until_still(run, definition)

    def _start(self, run: Run) -> Run | None:
        claimed = self._runs.claim(
            run.run_id,
            worker=self._rt.worker_id,
            lease_seconds=self._rt.settings.worker_lease_seconds,
        )
        if claimed is None:
            return None
        if not self._runs.emit(
            run.run_id, [NewEvent(RUN_STARTED, {"type": RUN_STARTED, "status": "running"})]
        ):
            return None
        definition = self._rt.registry.resolve_workflow(claimed.target)
        if definition.input_model is not None:
            try:
                definition.input_model.model_validate(
                    claimed.input if claimed.input is not None else {}
                )
            except Exception as exc:
                self._finish(
                    claimed,
                    FinishRun(
                        "failed",
                        error={
                            "message": f"input does not match the workflow's input model: {exc}",
                            "code": "invalid_input",
                        },
                    ),
                    {},
                )
                return None
        self._state.create(claimed.run_id, list(definition.nodes))
        if definition.timeout:
            self._state.dispatch(claimed, countdown=definition.timeout)
        return claimed

    def _plan_until_still(self, run: Run, definition: WorkflowDefinition) -> str:
        nodes: dict[str, NodeRecord] = {}
        for _ in range(MAX_PLANNING_ROUNDS):
            nodes = self._state.nodes(run.run_id)
            ctx = context_for(run.run_id, run.input, nodes)
            now = utcnow()
            if (
                definition.timeout
                and run.started_at
                and (now - run.started_at).total_seconds() >= definition.timeout
            ):
                actions: list[Action] = [
                    FinishRun(
                        "failed",
                        error={
                            "message": f"workflow timed out after {definition.timeout} s",
                            "code": "timeout",
                        },
                    )
                ]
            else:
                try:
                    actions = plan(definition, nodes, ctx, now)
                except Exception as exc:  # a condition, skip or output callable raised
                    actions = [
                        FinishRun(
                            "failed",
                            error={
                                "message": f"workflow definition raised: {exc}",
                                "code": "definition_error",
                            },
                        )
                    ]
            if not actions:
                break
            moved = False
            for action in actions:
                if isinstance(action, FinishRun):
                    self._finish(run, action, nodes, definition)
                    return action.status
                moved = self._apply(run, action) or moved
            if not moved:
                break
        self._park_if_only_waiting(run, definition)
        return "advanced"

    def _apply(self, run: Run, action: Action) -> bool:
        move = self._state.move
        now = utcnow()
        rid = run.run_id
        if isinstance(action, Start):
            if move(rid, action.node_id, [NodeStatus.PENDING], {"status": NodeStatus.QUEUED}):
                self._state.dispatch(run, node_id=action.node_id)
                return True
            return False
        if isinstance(action, Skip):
            return move(
                rid,
                action.node_id,
                [NodeStatus.PENDING],
                {"status": NodeStatus.SKIPPED, "completed_at": now},
                event=step_event(STEP_FINISHED, action.node_id, "skipped", 0),
            )
        if isinstance(action, Park):
            parked = move(
                rid,
                action.node_id,
                [NodeStatus.PENDING],
                {
                    "status": NodeStatus.WAITING,
                    "deadline": action.deadline,
                    "wait_event": action.event,
                    "started_at": now,
                },
                event=step_event(STEP_STARTED, action.node_id, "waiting", 0),
            )
            if parked and action.deadline is not None:
                self._state.dispatch(
                    run, countdown=max(0.0, (action.deadline - now).total_seconds()) + 0.05
                )
            return parked
        if isinstance(action, Open):
            return move(
                rid,
                action.node_id,
                [NodeStatus.PENDING],
                {"status": NodeStatus.RUNNING, "arm": action.arm, "started_at": now},
                event=step_event(
                    STEP_STARTED,
                    action.node_id,
                    "running",
                    0,
                    **({"arm": action.arm} if action.arm else {}),
                ),
            )
        if isinstance(action, Complete):
            return move(
                rid,
                action.node_id,
                [NodeStatus.RUNNING],
                {"status": NodeStatus.COMPLETED, "output": action.output, "completed_at": now},
                event=step_event(STEP_FINISHED, action.node_id, "completed", 0),
            )
        if isinstance(action, Fail):
            return move(
                rid,
                action.node_id,
                [NodeStatus.RUNNING, NodeStatus.WAITING],
                {"status": NodeStatus.FAILED, "error": action.error, "completed_at": now},
                event=step_event(
                    STEP_FINISHED, action.node_id, "failed", 0, message=action.error.get("message")
                ),
            )
        if isinstance(action, Cancel):
            return move(
                rid,
                action.node_id,
                NODE_ACTIVE,
                {"status": NodeStatus.CANCELLED, "completed_at": now},
                event=step_event(STEP_FINISHED, action.node_id, "cancelled", 0),
            )
        raise TypeError(action)

    def _park_if_only_waiting(self, run: Run, definition: WorkflowDefinition) -> None:
        """A run whose only live nodes wait on approvals or events is ``waiting``."""
        fresh = self._state.nodes(run.run_id)
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
            self._state.set_waiting(run.run_id, reason)

    def _finish(
        self,
        run: Run,
        action: FinishRun,
        nodes: dict[str, NodeRecord],
        definition: WorkflowDefinition | None = None,
    ) -> None:
        output, error = action.output, action.error
        if (
            action.status == "completed"
            and definition is not None
            and definition.output_model is not None
        ):
            try:
                output = definition.output_model.model_validate(output).model_dump(mode="json")
            except Exception as exc:
                output, error = (
                    None,
                    {
                        "message": f"the workflow's output does not match its output model: {exc}",
                        "code": "invalid_output",
                    },
                )
        if output is not None:
            try:
                json.dumps(output)
            except (TypeError, ValueError) as exc:
                output, error = (
                    None,
                    {
                        "message": f"the workflow's output is not JSON: {exc}",
                        "code": "invalid_output",
                    },
                )
        failed = error is not None
        outcome = Outcome(
            RunStatus.FAILED if failed else RunStatus.COMPLETED,
            output=None if failed else output,
            error=RunError(error["message"], code=error.get("code"), detail=error.get("detail"))
            if error
            else None,
            logs=_joined_logs(nodes),
            exit_code=1 if failed else 0,
        )
        if self._runs.finish(run, outcome, stop_work=True):
            self._state.end_nodes(run.run_id)

    # -- steps ----------------------------------------------------------------------------

    def run_step(self, run_id: str, node_id: str) -> str:
        run = self._runs.load(run_id)
        if run is None or run.status.is_terminal:
            return "skipped: run ended"
        definition = self._rt.registry.resolve_workflow(run.target)
        step = definition.nodes[node_id].node
        assert isinstance(step, Step)
        lease = self._rt.settings.worker_lease_seconds
        claim = self._state.claim
        node = claim(run_id, node_id, worker=self._rt.worker_id, lease_seconds=lease)
        if node is None:
            # Redelivered after its worker died? Take it over once the dead attempt's lease ends.
            node = claim(
                run_id, node_id, worker=self._rt.worker_id, lease_seconds=lease, reclaim=True
            )
            if node is None:
                left = self._state.lease_left(run_id, node_id)
                if left > 0:
                    self._state.dispatch(run, node_id=node_id, countdown=left + 0.2)
                    return "deferred: the node's lease is still held"
                return "skipped: node not queued"
            retry = step.retry or definition.retry
            if node.attempt > (retry.max_attempts if retry else 1):
                lost = Outcome(
                    RunStatus.FAILED,
                    error=RunError(
                        f"the worker running step {node_id!r} was lost", code="worker_lost"
                    ),
                    exit_code=1,
                )
                self._record(run, definition, step, node, lost, retry_allowed=False)
                return self.advance(run_id)
        self._runs.emit(run_id, [step_event(STEP_STARTED, node_id, "running", node.attempt)])
        nodes = self._state.nodes(run_id)
        wctx = context_for(run_id, run.input, nodes)
        with _LeaseKeeper(self._state, node, lease):
            outcome = self._execute(run, step, node, wctx)
        self._record(run, definition, step, node, outcome)
        return self.advance(run_id)

    def _execute(self, run: Run, step: Step, node: NodeRecord, wctx: WorkflowContext) -> Outcome:
        try:
            config = step.input(wctx) if callable(step.input) else step.input
        except Exception as exc:
            return Outcome(
                RunStatus.FAILED,
                error=RunError(f"step input raised: {exc}", code="invalid_input"),
                exit_code=1,
            )
        definition = (
            self._rt.registry.resolve(f"task:{step.task}")
            if step.task is not None
            else TaskDefinition(id=step.id, fn=step.fn)  # type: ignore[arg-type]
        )
        flag = threading.Event()
        timed_out = threading.Event()
        ctx = TaskContext(
            run_id=run.run_id,
            project_id=run.project_id,
            target=run.target,
            attempt=node.attempt,
            config=config,
            input=run.input,
            publish=lambda events: None if self._runs.emit(run.run_id, events) else flag.set(),
            cancel_event=flag,
            results=dict(wctx.results),
            start_child=lambda target, cfg, name: self._start_child(run, target, cfg, name),
        )
        timer = None
        if step.timeout:

            def expire() -> None:
                timed_out.set()
                flag.set()

            timer = threading.Timer(step.timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            with self._rt.monitor.watch(f"{run.run_id}", flag):
                outcome = run_in_process(definition, ctx)
        finally:
            if timer is not None:
                timer.cancel()
        if timed_out.is_set() and outcome.status is not RunStatus.COMPLETED:
            outcome = Outcome(
                RunStatus.FAILED,
                error=RunError(
                    f"step {step.id!r} timed out after {step.timeout} s", code="timeout"
                ),
                logs=outcome.logs,
                exit_code=1,
            )
        return outcome

    def _record(
        self,
        run: Run,
        definition: WorkflowDefinition,
        step: Step,
        node: NodeRecord,
        outcome: Outcome,
        *,
        retry_allowed: bool = True,
    ) -> None:
        logs = "\n".join(x for x in (node.logs, outcome.logs) if x) or None
        if outcome.status is RunStatus.COMPLETED:
            self._state.move(
                run.run_id,
                node.node_id,
                [NodeStatus.RUNNING],
                {
                    "status": NodeStatus.COMPLETED,
                    "output": outcome.output,
                    "logs": logs,
                    "error": None,
                    "completed_at": utcnow(),
                },
                attempt=node.attempt,
                event=step_event(STEP_FINISHED, node.node_id, "completed", node.attempt),
            )
            return
        error = outcome.error.to_json() if outcome.error else {"message": "step failed"}
        retry = (step.retry or definition.retry) if retry_allowed else None
        if (
            outcome.status is RunStatus.FAILED
            and retry is not None
            and node.attempt < retry.max_attempts
        ):
            delay = retry.delay(node.attempt)
            if self._state.move(
                run.run_id,
                node.node_id,
                [NodeStatus.RUNNING],
                {"status": NodeStatus.QUEUED, "error": error, "logs": logs},
                attempt=node.attempt,
                event=step_event(
                    STEP_FINISHED,
                    node.node_id,
                    "failed",
                    node.attempt,
                    retrying=True,
                    message=error["message"],
                ),
            ):
                self._state.dispatch(run, node_id=node.node_id, countdown=delay)
            return
        status = (
            NodeStatus.CANCELLED if outcome.status is RunStatus.CANCELLED else NodeStatus.FAILED
        )
        self._state.move(
            run.run_id,
            node.node_id,
            [NodeStatus.RUNNING],
            {"status": status, "error": error, "logs": logs, "completed_at": utcnow()},
            attempt=node.attempt,
            event=step_event(
                STEP_FINISHED, node.node_id, status.value, node.attempt, message=error["message"]
            ),
        )

    def _start_child(self, run: Run, target: str, config: Any, name: str | None) -> str:
        project = self._rt.access.find_project(run.project_id)
        child, _ = self._runs.submit(
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


class _LeaseKeeper:
    """Renews a running node's lease every third of its length while the step runs."""

    def __init__(self, state: Any, node: NodeRecord, lease_seconds: float) -> None:
        self._state = state
        self._node = node
        self._lease = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runs-node-lease", daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                self._state.renew(
                    self._node.run_id, self._node.node_id, self._node.attempt, self._lease
                )
            except Exception:
                log.warning("could not renew the lease of %s", self._node.node_id, exc_info=True)


def _joined_logs(nodes: dict[str, NodeRecord]) -> str | None:
    lines = [
        f"[{n.node_id}] {line}" for n in nodes.values() if n.logs for line in n.logs.splitlines()
    ]
    return "\n".join(lines) if lines else None
