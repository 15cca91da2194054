"""Workflow definitions: how the DSL places nodes, what registration rejects, retry delays.

Pure: a fresh ``Registry`` per test, nothing touches a database, Redis or a worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from workers.definitions.dsl import (
    Branch,
    Parallel,
    Retry,
    Step,
    Wait,
    WorkflowDefinition,
    WorkflowDefinitionError,
    branch,
    parallel,
    step,
    unless,
    wait_for_approval,
    wait_for_event,
    when,
)
from workers.definitions.errors import DefinitionError
from workers.definitions.registry import Registry


def noop(ctx: Any) -> None:
    return None


def yes(ctx: Any) -> bool:
    return True


@pytest.fixture
def registry() -> Registry:
    """A fresh registry that knows the tasks the workflows below name."""
    fresh = Registry()
    for task_id in ("echo", "fail", "sleep"):
        fresh.task(task_id)(noop)
    return fresh


def rejected(registry: Registry, steps: Sequence[Any], workflow_id: str = "wf") -> str:
    with pytest.raises(WorkflowDefinitionError) as caught:
        registry.workflow(workflow_id, steps)
    return str(caught.value)


def deps(definition: WorkflowDefinition) -> dict[str, tuple[str, ...]]:
    return {node_id: placed.deps for node_id, placed in definition.nodes.items()}


# -- what registration rejects ---------------------------------------------------------------


def test_a_step_naming_an_unknown_task_is_rejected(registry: Registry) -> None:
    message = rejected(registry, [step("one", "echo"), step("two", "nope")])
    assert "'wf'" in message and "'two'" in message and "unknown task 'nope'" in message


def test_a_task_registered_after_the_workflow_is_too_late() -> None:
    fresh = Registry()
    with pytest.raises(WorkflowDefinitionError, match="unknown task 'late'"):
        fresh.workflow("wf", [step("one", "late")])
    fresh.task("late")(noop)
    assert fresh.workflow("wf", [step("one", "late")]).roots == ("one",)


def test_a_node_id_used_twice_is_rejected(registry: Registry) -> None:
    message = rejected(registry, [step("one", "echo"), step("one", "fail")])
    assert "node id 'one' is used twice" in message


def test_a_node_id_reused_inside_a_parallel_group_is_rejected(registry: Registry) -> None:
    steps = [step("a", "echo"), parallel("group", [step("b", "echo"), step("a", "echo")])]
    assert "'a' is used twice" in rejected(registry, steps)


def test_a_node_id_reused_across_nested_groups_is_rejected(registry: Registry) -> None:
    steps = [
        branch(
            "pick",
            yes,
            then=[parallel("inner", [step("deep", "echo")])],
            otherwise=[step("deep", "echo")],
        )
    ]
    assert "'deep' is used twice" in rejected(registry, steps)


def test_a_group_may_not_share_its_id_with_one_of_its_children(registry: Registry) -> None:
    steps = [parallel("same", [step("same", "echo")])]
    assert "'same' is used twice" in rejected(registry, steps)


def test_a_dependency_cycle_is_rejected_and_named(registry: Registry) -> None:
    steps = [
        step("a", "echo", depends_on="c"),
        step("b", "echo", depends_on="a"),
        step("c", "echo", depends_on="b"),
    ]
    message = rejected(registry, steps)
    assert "dependency cycle" in message
    assert "a -> c -> b -> a" in message


def test_a_node_depending_on_itself_is_a_cycle(registry: Registry) -> None:
    message = rejected(registry, [step("loop", "echo", depends_on="loop")])
    assert "dependency cycle loop -> loop" in message


def test_a_cycle_inside_a_parallel_group_is_rejected(registry: Registry) -> None:
    steps = [
        parallel(
            "group",
            [step("x", "echo", depends_on="y"), step("y", "echo", depends_on="x")],
        )
    ]
    assert "dependency cycle" in rejected(registry, steps)


def test_depending_on_a_missing_node_is_rejected(registry: Registry) -> None:
    message = rejected(registry, [step("one", "echo"), step("two", "echo", depends_on="ghost")])
    assert "node 'two' depends on missing node 'ghost'" in message


def test_a_child_may_not_depend_on_a_node_outside_its_group(registry: Registry) -> None:
    steps = [
        step("before", "echo"),
        parallel("group", [step("inner", "echo", depends_on="before")]),
    ]
    message = rejected(registry, steps)
    assert "'inner' may only depend on nodes of the same group, not 'before'" in message


def test_a_top_level_node_may_not_depend_on_a_child_of_a_group(registry: Registry) -> None:
    steps = [
        parallel("group", [step("inner", "echo")]),
        step("after", "echo", depends_on="inner"),
    ]
    assert "'after' may only depend on nodes of the same group" in rejected(registry, steps)


def test_a_node_may_not_depend_on_the_other_arm_of_its_branch(registry: Registry) -> None:
    steps = [
        branch(
            "pick",
            yes,
            then=[step("big", "echo")],
            otherwise=[step("small", "echo", depends_on="big")],
        )
    ]
    assert "not 'big'" in rejected(registry, steps)


def test_a_workflow_without_steps_is_rejected(registry: Registry) -> None:
    assert "workflow 'wf' has no steps" in rejected(registry, [])


def test_an_empty_parallel_group_is_rejected(registry: Registry) -> None:
    assert "parallel 'group' is empty" in rejected(registry, [parallel("group", [])])


def test_a_branch_without_a_condition_is_rejected(registry: Registry) -> None:
    blind = Branch(id="pick", then=(step("one", "echo"),))
    assert "branch 'pick' has no condition" in rejected(registry, [blind])


def test_waiting_for_an_event_without_naming_it_is_rejected(registry: Registry) -> None:
    assert "wait 'hook' names no event" in rejected(registry, [wait_for_event("hook", event="")])
    nameless = Wait(id="hook", kind="event")
    assert "wait 'hook' names no event" in rejected(registry, [nameless])


def test_a_step_that_runs_nothing_is_rejected(registry: Registry) -> None:
    assert "step 'idle' runs nothing" in rejected(registry, [Step(id="idle")])


@pytest.mark.parametrize("bad", ["", "-leading", "has space", "col:on", "x" * 201])
def test_an_invalid_workflow_id_is_rejected(registry: Registry, bad: str) -> None:
    message = rejected(registry, [step("one", "echo")], workflow_id=bad)
    assert "is not a valid definition id" in message


@pytest.mark.parametrize("bad", ["", "/leading", "has space", "col:on", "tab\t"])
def test_an_invalid_node_id_is_rejected(registry: Registry, bad: str) -> None:
    assert "is not valid" in rejected(registry, [step(bad, "echo")])


def test_an_invalid_node_id_inside_a_group_is_rejected(registry: Registry) -> None:
    steps = [parallel("group", [step("fine", "echo"), step("not fine", "echo")])]
    assert "node id 'not fine' is not valid" in rejected(registry, steps)


def test_ids_may_use_dots_slashes_dashes_and_underscores(registry: Registry) -> None:
    definition = registry.workflow("team/etl.v2", [step("load_all-1.x/y", "echo")])
    assert definition.target == "workflow:team/etl.v2"
    assert definition.roots == ("load_all-1.x/y",)


def test_registering_the_same_workflow_id_twice_is_rejected(registry: Registry) -> None:
    first = registry.workflow("wf", [step("one", "echo")])
    with pytest.raises(DefinitionError, match="workflow 'wf' is defined twice"):
        registry.workflow("wf", [step("other", "echo")])
    assert registry.resolve_workflow("workflow:wf") is first


def test_a_rejected_workflow_is_not_registered(registry: Registry) -> None:
    rejected(registry, [step("one", "nope")])
    assert "workflow:wf" not in registry.targets()
    assert registry.workflow("wf", [step("one", "echo")]).roots == ("one",)


@pytest.mark.parametrize("where", ["steps", "parallel"])
def test_something_that_is_not_a_node_is_rejected_as_a_definition_error(
    registry: Registry, where: str
) -> None:
    not_a_node: Any = "echo"
    steps: list[Any] = [not_a_node] if where == "steps" else [parallel("group", [not_a_node])]
    assert "is not a node" in rejected(registry, steps)


# -- how nodes are placed --------------------------------------------------------------------


def test_a_plain_list_runs_in_sequence(registry: Registry) -> None:
    definition = registry.workflow(
        "wf", [step("one", "echo"), step("two", "echo"), step("three", "echo")]
    )
    assert definition.roots == ("one", "two", "three")
    assert deps(definition) == {"one": (), "two": ("one",), "three": ("two",)}
    assert all(p.container is None and p.arm is None for p in definition.nodes.values())


def test_explicit_depends_on_builds_a_dag(registry: Registry) -> None:
    definition = registry.workflow(
        "wf",
        [
            step("fetch", "echo"),
            step("left", "echo", depends_on=["fetch"]),
            step("right", "echo", depends_on="fetch"),
            step("join", "echo", depends_on=["left", "right"]),
        ],
    )
    assert deps(definition) == {
        "fetch": (),
        "left": ("fetch",),
        "right": ("fetch",),
        "join": ("left", "right"),
    }
    assert definition.roots == ("fetch", "left", "right", "join")


def test_depends_on_an_empty_list_starts_at_once(registry: Registry) -> None:
    definition = registry.workflow(
        "wf", [step("one", "echo"), step("two", "echo", depends_on=[]), step("three", "echo")]
    )
    assert deps(definition) == {"one": (), "two": (), "three": ("two",)}


def test_a_later_node_may_be_depended_on_before_it_is_listed(registry: Registry) -> None:
    definition = registry.workflow(
        "wf", [step("report", "echo", depends_on="load"), step("load", "echo", depends_on=[])]
    )
    assert deps(definition) == {"report": ("load",), "load": ()}


def test_parallel_children_start_together_unless_they_say_otherwise(registry: Registry) -> None:
    definition = registry.workflow(
        "wf",
        [
            step("before", "echo"),
            parallel(
                "group",
                [step("a", "echo"), step("b", "echo"), step("c", "echo", depends_on="a")],
                strategy="race",
            ),
            step("after", "echo"),
        ],
    )
    assert definition.roots == ("before", "group", "after")
    assert deps(definition) == {
        "before": (),
        "group": ("before",),
        "a": (),
        "b": (),
        "c": ("a",),
        "after": ("group",),
    }
    assert {definition.nodes[c].container for c in "abc"} == {"group"}
    assert definition.members_of("group") == ("a", "b", "c")
    group = definition.nodes["group"].node
    assert isinstance(group, Parallel) and group.strategy == "race"


def test_branch_arms_are_sequences_inside_the_branch(registry: Registry) -> None:
    definition = registry.workflow(
        "wf",
        [
            branch(
                "pick",
                yes,
                then=[step("t1", "echo"), step("t2", "echo")],
                otherwise=[step("o1", "echo")],
            )
        ],
    )
    assert definition.members_of("pick", "then") == ("t1", "t2")
    assert definition.members_of("pick", "otherwise") == ("o1",)
    assert deps(definition) == {"pick": (), "t1": (), "t2": ("t1",), "o1": ()}
    placed = {node_id: (p.container, p.arm) for node_id, p in definition.nodes.items()}
    assert placed == {
        "pick": (None, None),
        "t1": ("pick", "then"),
        "t2": ("pick", "then"),
        "o1": ("pick", "otherwise"),
    }


def test_when_places_its_nodes_in_the_then_arm(registry: Registry) -> None:
    definition = registry.workflow("wf", [when("maybe", yes, [step("extra", "echo")])])
    assert definition.members_of("maybe", "then") == ("extra",)
    assert definition.members_of("maybe", "otherwise") == ()
    assert definition.nodes["extra"].arm == "then"


def test_unless_places_its_nodes_in_the_otherwise_arm(registry: Registry) -> None:
    definition = registry.workflow("wf", [unless("maybe", yes, [step("extra", "echo")])])
    assert definition.members_of("maybe", "otherwise") == ("extra",)
    assert definition.members_of("maybe", "then") == ()
    assert definition.nodes["extra"].arm == "otherwise"


def test_members_of_something_that_is_not_a_group_is_empty(registry: Registry) -> None:
    definition = registry.workflow("wf", [step("one", "echo")])
    assert definition.members_of("one") == ()
    assert definition.members_of("nowhere", "then") == ()


def test_groups_nest(registry: Registry) -> None:
    definition = registry.workflow(
        "wf",
        [
            parallel(
                "outer",
                [
                    branch("pick", yes, then=[step("deep", "echo")]),
                    parallel("inner", [step("x", "echo"), step("y", "echo")]),
                ],
            )
        ],
    )
    assert definition.roots == ("outer",)
    assert definition.members_of("outer") == ("pick", "inner")
    assert definition.members_of("pick", "then") == ("deep",)
    assert definition.members_of("inner") == ("x", "y")
    assert definition.nodes["deep"].container == "pick"
    assert definition.nodes["x"].container == "inner"
    assert definition.nodes["inner"].container == "outer"


def test_a_group_named_like_a_branch_arm_does_not_take_over_the_arm(registry: Registry) -> None:
    definition = registry.workflow(
        "wf",
        [
            branch("pick", yes, then=[step("real", "echo")]),
            parallel("pick/then", [step("impostor", "echo")]),
        ],
    )
    assert definition.members_of("pick", "then") == ("real",)
    assert definition.members_of("pick/then") == ("impostor",)


def test_steps_keep_what_they_were_given(registry: Registry) -> None:
    policy = Retry(max_attempts=3, backoff="fixed")
    definition = registry.workflow(
        "wf",
        [
            step("by_name", "echo", input={"a": 1}, retry=policy, timeout=5),
            step("by_function", noop, skip=yes),
            wait_for_approval("review", timeout=60),
            wait_for_event("hook", event="paid"),
        ],
    )
    by_name = definition.nodes["by_name"].node
    assert isinstance(by_name, Step)
    assert (by_name.task, by_name.fn, by_name.input) == ("echo", None, {"a": 1})
    assert by_name.retry is policy and by_name.timeout == 5
    by_function = definition.nodes["by_function"].node
    assert isinstance(by_function, Step)
    assert by_function.task is None and by_function.fn is noop and by_function.skip is yes
    review = definition.nodes["review"].node
    assert isinstance(review, Wait)
    assert (review.kind, review.event, review.timeout) == ("approval", None, 60)
    hook = definition.nodes["hook"].node
    assert isinstance(hook, Wait) and (hook.kind, hook.event) == ("event", "paid")


def test_workflow_options_are_kept_on_the_definition(registry: Registry) -> None:
    def output(ctx: Any) -> str:
        return "done"

    policy = Retry(max_attempts=2)
    definition = registry.workflow(
        "wf",
        [step("one", "echo")],
        timeout=30,
        retry=policy,
        output=output,
        description="Does one thing.",
    )
    assert definition.timeout == 30 and definition.retry is policy
    assert definition.output is output and definition.description == "Does one thing."


# -- the catalogue ---------------------------------------------------------------------------


class Order(BaseModel):
    order_id: str


class Receipt(BaseModel):
    total: float


def test_a_registered_workflow_appears_in_the_catalog(registry: Registry) -> None:
    registry.workflow(
        "orders/checkout",
        [step("one", "echo")],
        input_model=Order,
        output_model=Receipt,
        description="Checks out an order.",
    )
    entries = {e.target: e for e in registry.catalog_entries()}
    entry = entries["workflow:orders/checkout"]
    assert entry.kind == "workflow" and entry.name == "orders/checkout"
    assert entry.description == "Checks out an order."
    assert entry.input_schema == Order.model_json_schema()
    assert entry.output_schema == Receipt.model_json_schema()
    assert entries["task:echo"].kind == "task"


def test_a_workflow_without_models_has_no_schemas(registry: Registry) -> None:
    registry.workflow("wf", [step("one", "echo")])
    (entry,) = [e for e in registry.catalog_entries() if e.kind == "workflow"]
    assert entry.input_schema is None and entry.output_schema is None


def test_targets_list_tasks_and_workflows(registry: Registry) -> None:
    registry.workflow("wf", [step("one", "echo")])
    registry.workflow("another", [step("one", "echo")])
    assert registry.targets() == [
        "task:echo",
        "task:fail",
        "task:sleep",
        "workflow:another",
        "workflow:wf",
    ]
    assert registry.resolve_workflow("workflow:another").id == "another"
    with pytest.raises(LookupError):
        registry.resolve_workflow("task:echo")


# -- retry delays ----------------------------------------------------------------------------


def test_a_default_retry_tries_once_with_exponential_backoff() -> None:
    policy = Retry()
    assert (policy.max_attempts, policy.backoff) == (1, "exponential")
    assert (policy.initial_delay, policy.max_delay, policy.jitter) == (1.0, 30.0, 0.1)


def test_a_fixed_backoff_always_waits_the_initial_delay() -> None:
    policy = Retry(backoff="fixed", initial_delay=2.5, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [2.5] * 5


def test_a_linear_backoff_grows_by_the_initial_delay() -> None:
    policy = Retry(backoff="linear", initial_delay=2, jitter=0)
    assert [policy.delay(n) for n in range(1, 5)] == [2, 4, 6, 8]


def test_an_exponential_backoff_doubles() -> None:
    policy = Retry(backoff="exponential", initial_delay=0.5, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1, 2, 4, 8]


@pytest.mark.parametrize("backoff", ["fixed", "linear", "exponential"])
def test_delays_are_capped_at_max_delay(backoff: Any) -> None:
    policy = Retry(backoff=backoff, initial_delay=7, max_delay=5, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 10, 50)] == [5, 5, 5, 5]


def test_a_linear_backoff_is_capped_from_the_attempt_it_would_exceed() -> None:
    policy = Retry(backoff="linear", initial_delay=2, max_delay=5, jitter=0)
    assert [policy.delay(n) for n in range(1, 5)] == [2, 4, 5, 5]


def test_an_exponential_backoff_is_capped_from_the_attempt_it_would_exceed() -> None:
    policy = Retry(backoff="exponential", initial_delay=1, max_delay=10, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_jitter_stays_within_its_fraction_and_spreads() -> None:
    policy = Retry(backoff="fixed", initial_delay=10, jitter=0.2)
    samples = [policy.delay(1) for _ in range(2000)]
    assert all(8 <= s <= 12 for s in samples)
    assert min(samples) < 9 and max(samples) > 11


def test_jitter_applies_around_each_attempts_delay() -> None:
    policy = Retry(backoff="exponential", initial_delay=1, max_delay=100, jitter=0.1)
    for attempt, base in [(1, 1), (3, 4), (5, 16)]:
        samples = [policy.delay(attempt) for _ in range(500)]
        assert all(base * 0.9 <= s <= base * 1.1 for s in samples), attempt


def test_jitter_around_a_capped_delay_stays_within_its_fraction_of_max_delay() -> None:
    policy = Retry(backoff="exponential", initial_delay=1, max_delay=5, jitter=0.1)
    samples = [policy.delay(20) for _ in range(500)]
    assert all(4.5 <= s <= 5.5 for s in samples)


def test_a_delay_is_never_negative() -> None:
    policy = Retry(backoff="fixed", initial_delay=1, jitter=3)
    assert all(policy.delay(1) >= 0 for _ in range(500))
    assert Retry(initial_delay=0, jitter=0).delay(1) == 0


def test_a_very_late_attempt_is_still_capped_at_max_delay() -> None:
    assert Retry(max_attempts=2000, jitter=0).delay(1100) == 30.0
