"""The workflow planner: from a definition and its node states, what happens next.

Pure: it reads states and returns actions; ``workers.workflows.engine`` applies them with conditional
updates, so two workers planning at once cannot both start a node or finish a group.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from runs.domain.runs import ErrorCode, RunError
from runs.domain.workflows import NODE_ACTIVE, NODE_SUCCEEDED, NodeRecord, NodeStatus
from workers.definitions.dsl import Branch, Parallel, Step, Wait, WorkflowDefinition


@dataclass
class WorkflowContext:
    """What conditions, ``skip`` and step ``input`` callables see."""

    run_id: str
    input: Any
    results: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Start:
    node_id: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Never run the node: ``skipped``, or ``cancelled`` when what it needed failed (so that
    whatever depends on it is not run either)."""

    node_id: str
    broken: bool = False


@dataclass(frozen=True, slots=True)
class Park:
    node_id: str
    deadline: datetime | None
    event: str | None


@dataclass(frozen=True, slots=True)
class Open:
    node_id: str
    arm: Literal["then", "otherwise"] | None


@dataclass(frozen=True, slots=True)
class Complete:
    node_id: str
    output: Any


@dataclass(frozen=True, slots=True)
class Fail:
    node_id: str
    error: RunError


@dataclass(frozen=True, slots=True)
class Cancel:
    node_id: str


@dataclass(frozen=True, slots=True)
class FinishRun:
    status: Literal["completed", "failed"]
    output: Any = None
    error: RunError | None = None


Action = Start | Skip | Park | Open | Complete | Fail | Cancel | FinishRun

_BROKEN = frozenset({NodeStatus.FAILED, NodeStatus.CANCELLED})


def context_for(run_id: str, run_input: Any, nodes: dict[str, NodeRecord]) -> WorkflowContext:
    return WorkflowContext(
        run_id=run_id,
        input=run_input,
        results={k: n.output for k, n in nodes.items() if n.status is NodeStatus.COMPLETED},
        statuses={k: n.status.value for k, n in nodes.items()},
    )


def plan(
    definition: WorkflowDefinition,
    nodes: dict[str, NodeRecord],
    ctx: WorkflowContext,
    now: datetime,
) -> list[Action]:
    finish = _run_outcome(definition, nodes, ctx)
    if finish is not None:
        return [finish]
    actions: list[Action] = []
    actions.extend(_expired_waits(nodes, now))
    closing: set[str] = set()  # groups this plan completes or fails: start nothing inside them
    for node_id, placed in definition.nodes.items():
        record = nodes[node_id]
        if record.status is NodeStatus.RUNNING and isinstance(placed.node, Parallel | Branch):
            settled = _settle_group(definition, placed.node, record, nodes)
            if settled:
                closing.add(node_id)
            actions.extend(settled)
    for node_id in definition.nodes:
        if nodes[node_id].status is NodeStatus.PENDING:
            action = _next_for_pending(definition, node_id, nodes, ctx, now, closing)
            if action is not None:
                actions.append(action)
    return actions


def _run_outcome(
    definition: WorkflowDefinition, nodes: dict[str, NodeRecord], ctx: WorkflowContext
) -> FinishRun | None:
    roots = [nodes[r] for r in definition.roots]
    for record in roots:
        if record.status in _BROKEN:
            error = record.error or RunError(f"node {record.node_id} {record.status}")
            detail = error.detail if error.detail is not None else {}
            if isinstance(detail, dict):
                detail = {**detail, "node_id": record.node_id}
            message = f"node {record.node_id!r} failed: {error.message}"
            return FinishRun("failed", error=replace(error, message=message, detail=detail))
    if all(r.status in NODE_SUCCEEDED for r in roots):
        if definition.output is not None:
            return FinishRun("completed", output=definition.output(ctx))
        return FinishRun("completed", output=roots[-1].output)
    return None


def _expired_waits(nodes: dict[str, NodeRecord], now: datetime) -> list[Action]:
    return [
        Fail(
            n.node_id,
            RunError(f"wait {n.node_id!r} timed out", code=ErrorCode.TIMEOUT),
        )
        for n in nodes.values()
        if n.status is NodeStatus.WAITING and n.deadline is not None and n.deadline <= now
    ]


def _settle_group(
    definition: WorkflowDefinition,
    group: Parallel | Branch,
    record: NodeRecord,
    nodes: dict[str, NodeRecord],
) -> list[Action]:
    if isinstance(group, Branch):
        members = [nodes[m] for m in definition.members_of(group.id, record.arm)]
        broken = next((m for m in members if m.status in _BROKEN), None)
        if broken is not None:
            return [_fail_from(group.id, broken), *_cancel_active(members)]
        if all(m.status in NODE_SUCCEEDED for m in members):
            return [Complete(group.id, members[-1].output if members else None)]
        return []
    children = [nodes[c] for c in definition.members_of(group.id)]
    if group.strategy == "all":
        broken = next((c for c in children if c.status in _BROKEN), None)
        if broken is not None:
            return [_fail_from(group.id, broken), *_cancel_active(children)]
        if all(c.status in NODE_SUCCEEDED for c in children):
            return [Complete(group.id, {c.node_id: c.output for c in children})]
        return []
    if group.strategy == "race":
        winner = next((c for c in children if c.status is NodeStatus.COMPLETED), None)
        if winner is not None:
            return [Complete(group.id, winner.output), *_cancel_active(children)]
        if all(c.status.is_terminal for c in children):
            return [Fail(group.id, RunError(f"no branch of race {group.id!r} completed"))]
        return []
    if all(c.status.is_terminal for c in children):
        settled = {
            c.node_id: {"status": c.status.value, "output": c.output}
            if c.status is not NodeStatus.FAILED
            else {"status": "failed", "error": c.error.to_json() if c.error else None}
            for c in children
        }
        return [Complete(group.id, settled)]
    return []


def _fail_from(group_id: str, member: NodeRecord) -> Fail:
    return Fail(group_id, member.error or RunError(f"{member.node_id} was {member.status}"))


def _cancel_active(members: list[NodeRecord]) -> list[Action]:
    return [Cancel(m.node_id) for m in members if m.status in NODE_ACTIVE]


def _next_for_pending(
    definition: WorkflowDefinition,
    node_id: str,
    nodes: dict[str, NodeRecord],
    ctx: WorkflowContext,
    now: datetime,
    closing: set[str],
) -> Action | None:
    placed = definition.nodes[node_id]
    if placed.container is not None:
        container = nodes[placed.container]
        if container.status.is_terminal or placed.container in closing:
            return Skip(node_id)
        if container.status is not NodeStatus.RUNNING:
            return None
        if placed.arm is not None and container.arm != placed.arm:
            return Skip(node_id)
    deps = [nodes[d].status for d in placed.deps]
    if any(s in _BROKEN for s in deps):
        return Skip(node_id, broken=True)
    if not all(s in NODE_SUCCEEDED for s in deps):
        return None
    node = placed.node
    if node.skip is not None and node.skip(ctx):
        return Skip(node_id)
    if isinstance(node, Step):
        return Start(node_id)
    if isinstance(node, Wait):
        deadline = now + timedelta(seconds=node.timeout) if node.timeout else None
        return Park(node_id, deadline, node.event)
    if isinstance(node, Branch):
        assert node.condition is not None
        return Open(node_id, "then" if node.condition(ctx) else "otherwise")
    return Open(node_id, None)
