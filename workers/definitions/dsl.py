"""Workflow definitions: ``workflow(id, steps=[...])`` with steps, parallel groups, branches
and waits. Definitions are validated when registered, so mistakes fail at start-up."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from runs.domain.runs import DEFINITION_ID_PATTERN
from workers.definitions.errors import WorkflowDefinitionError

Strategy = Literal["all", "race", "all_settled"]
Backoff = Literal["fixed", "linear", "exponential"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Per-node retry policy: ``max_attempts`` in all, delays with ±``jitter`` (a fraction)."""

    max_attempts: int = 1
    backoff: Backoff = "exponential"
    initial_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.backoff == "fixed":
            base = self.initial_delay
        elif self.backoff == "linear":
            base = self.initial_delay * attempt
        else:
            base = self.initial_delay * 2 ** min(attempt - 1, 64)
        base = min(base, self.max_delay)
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    depends_on: tuple[str, ...] | None = None
    retry: Retry | None = None
    timeout: float | None = None
    skip: Callable[[Any], bool] | None = None


@dataclass(frozen=True, slots=True)
class Step(Node):
    task: str | None = None
    fn: Callable[..., Any] | None = None
    input: Any = None


@dataclass(frozen=True, slots=True)
class Parallel(Node):
    children: tuple[Node, ...] = ()
    strategy: Strategy = "all"


@dataclass(frozen=True, slots=True)
class Branch(Node):
    condition: Callable[[Any], bool] | None = None
    then: tuple[Node, ...] = ()
    otherwise: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class Wait(Node):
    kind: Literal["approval", "event"] = "approval"
    event: str | None = None


def _deps(depends_on: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if depends_on is None:
        return None
    return (depends_on,) if isinstance(depends_on, str) else tuple(depends_on)


def step(
    id: str,
    task: str | Callable[..., Any],
    *,
    input: Any = None,
    depends_on: Sequence[str] | str | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    skip: Callable[[Any], bool] | None = None,
) -> Step:
    """Run a registered task (by id) or a function ``fn(ctx)``. ``input`` is a value or
    ``callable(workflow_ctx)``; it becomes the step's ``ctx.config``."""
    return Step(
        id=id,
        depends_on=_deps(depends_on),
        retry=retry,
        timeout=timeout,
        skip=skip,
        task=task if isinstance(task, str) else None,
        fn=None if isinstance(task, str) else task,
        input=input,
    )


def parallel(
    id: str,
    children: Sequence[Node],
    *,
    strategy: Strategy = "all",
    depends_on: Sequence[str] | str | None = None,
    skip: Callable[[Any], bool] | None = None,
) -> Parallel:
    """Start every child at once; ``all`` fails on the first failure, ``race`` takes the first
    to complete and cancels the rest, ``all_settled`` waits for all and never fails."""
    return Parallel(
        id=id, depends_on=_deps(depends_on), skip=skip, children=tuple(children), strategy=strategy
    )


def branch(
    id: str,
    condition: Callable[[Any], bool],
    *,
    then: Sequence[Node] = (),
    otherwise: Sequence[Node] = (),
    depends_on: Sequence[str] | str | None = None,
) -> Branch:
    """Run ``then`` when ``condition(ctx)`` is true, else ``otherwise`` (each in sequence)."""
    return Branch(
        id=id,
        depends_on=_deps(depends_on),
        condition=condition,
        then=tuple(then),
        otherwise=tuple(otherwise),
    )


def when(id: str, condition: Callable[[Any], bool], nodes: Sequence[Node]) -> Branch:
    return branch(id, condition, then=nodes)


def unless(id: str, condition: Callable[[Any], bool], nodes: Sequence[Node]) -> Branch:
    return branch(id, condition, otherwise=nodes)


def wait_for_approval(
    id: str, *, timeout: float | None = None, depends_on: Sequence[str] | str | None = None
) -> Wait:
    return Wait(id=id, depends_on=_deps(depends_on), timeout=timeout, kind="approval")


def wait_for_event(
    id: str,
    *,
    event: str,
    timeout: float | None = None,
    depends_on: Sequence[str] | str | None = None,
) -> Wait:
    return Wait(id=id, depends_on=_deps(depends_on), timeout=timeout, kind="event", event=event)


# -- compiled form -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    """A node with its place in the graph: its container, branch arm and dependencies."""

    node: Node
    container: str | None
    arm: Literal["then", "otherwise"] | None
    deps: tuple[str, ...]


@dataclass(frozen=True)
class WorkflowDefinition:
    id: str
    nodes: dict[str, Placed]
    roots: tuple[str, ...]
    input_model: type[BaseModel] | None = None
    output_model: type[BaseModel] | None = None
    timeout: float | None = None
    retry: Retry | None = None
    output: Callable[[Any], Any] | None = None
    description: str | None = None
    members: dict[tuple[str, str | None], tuple[str, ...]] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"workflow:{self.id}"

    def members_of(self, container: str, arm: str | None = None) -> tuple[str, ...]:
        return self.members.get((container, arm), ())


def compile_workflow(
    id: str,
    steps: Sequence[Node],
    *,
    known_tasks: Callable[[str], bool],
    **options: Any,
) -> WorkflowDefinition:
    if not DEFINITION_ID_PATTERN.fullmatch(id):
        raise WorkflowDefinitionError(f"workflow id {id!r} is not a valid definition id")
    if not steps:
        raise WorkflowDefinitionError(f"workflow {id!r} has no steps")
    placer = _Placer(id, known_tasks)
    roots = placer.place_sequence(steps, None, None)
    _check_references(id, placer.placed)
    _check_acyclic(id, placer.placed)
    return WorkflowDefinition(
        id=id, nodes=placer.placed, roots=roots, members=placer.members, **options
    )


class _Placer:
    """Places a workflow's nodes: each in its container (a group, or a branch's arm) with what
    it depends on, checking each as it goes."""

    def __init__(self, workflow_id: str, known_tasks: Callable[[str], bool]) -> None:
        self._id = workflow_id
        self._known_tasks = known_tasks
        self.placed: dict[str, Placed] = {}
        self.members: dict[tuple[str, str | None], tuple[str, ...]] = {}

    def _error(self, message: str) -> WorkflowDefinitionError:
        return WorkflowDefinitionError(f"workflow {self._id!r}: {message}")

    def place_sequence(
        self,
        items: Sequence[Node],
        container: str | None,
        arm: Literal["then", "otherwise"] | None,
    ) -> tuple[str, ...]:
        previous: str | None = None
        ids: list[str] = []
        for item in items:
            if not isinstance(item, Node):
                raise self._error(f"{item!r} is not a node")
            deps = (
                item.depends_on
                if item.depends_on is not None
                else ((previous,) if previous else ())
            )
            self.place(item, container, arm, deps)
            ids.append(item.id)
            previous = item.id
        return tuple(ids)

    def place(
        self,
        item: Node,
        container: str | None,
        arm: Literal["then", "otherwise"] | None,
        deps: tuple[str, ...],
    ) -> None:
        if not isinstance(item, Node):
            raise self._error(f"{item!r} is not a node")
        if not DEFINITION_ID_PATTERN.fullmatch(item.id):
            raise self._error(f"node id {item.id!r} is not valid")
        if item.id in self.placed:
            raise self._error(f"node id {item.id!r} is used twice")
        self.placed[item.id] = Placed(item, container, arm, deps)
        if isinstance(item, Step):
            self._check_step(item)
        elif isinstance(item, Parallel):
            if not item.children:
                raise self._error(f"parallel {item.id!r} is empty")
            for child in item.children:
                if not isinstance(child, Node):
                    raise self._error(f"{child!r} is not a node")
                self.place(child, item.id, None, child.depends_on or ())
            self.members[(item.id, None)] = tuple(c.id for c in item.children)
        elif isinstance(item, Branch):
            if item.condition is None:
                raise self._error(f"branch {item.id!r} has no condition")
            self.members[(item.id, "then")] = self.place_sequence(item.then, item.id, "then")
            otherwise = self.place_sequence(item.otherwise, item.id, "otherwise")
            self.members[(item.id, "otherwise")] = otherwise
        elif isinstance(item, Wait) and item.kind == "event" and not item.event:
            raise self._error(f"wait {item.id!r} names no event")

    def _check_step(self, item: Step) -> None:
        if item.task is not None and not self._known_tasks(item.task):
            raise self._error(
                f"step {item.id!r} uses unknown task {item.task!r}; "
                "register it with @task before the workflow"
            )
        if item.task is None and item.fn is None:
            raise self._error(f"step {item.id!r} runs nothing")


def _check_references(workflow_id: str, placed: dict[str, Placed]) -> None:
    for node_id, where in placed.items():
        for dep in where.deps:
            if dep not in placed:
                raise WorkflowDefinitionError(
                    f"workflow {workflow_id!r}: node {node_id!r} depends on missing node {dep!r}"
                )
            other = placed[dep]
            if (other.container, other.arm) != (where.container, where.arm):
                raise WorkflowDefinitionError(
                    f"workflow {workflow_id!r}: node {node_id!r} may only depend on nodes of "
                    f"the same group, not {dep!r}"
                )


def _check_acyclic(workflow_id: str, placed: dict[str, Placed]) -> None:
    state: dict[str, int] = {}

    def visit(node_id: str, path: list[str]) -> None:
        if state.get(node_id) == 2:
            return
        if state.get(node_id) == 1:
            cycle = " -> ".join([*path[path.index(node_id) :], node_id])
            raise WorkflowDefinitionError(f"workflow {workflow_id!r}: dependency cycle {cycle}")
        state[node_id] = 1
        for dep in placed[node_id].deps:
            visit(dep, [*path, node_id])
        state[node_id] = 2

    for node_id in placed:
        visit(node_id, [])
