"""The workflow planner: ``plan()`` on hand-built node states, one decision at a time.

Pure: each test compiles a definition, sets every node pending, overrides a few and checks
the actions the planner returns. Nothing touches a database, Redis or a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from runs.domain.runs import RunError
from runs.domain.workflows import NodeRecord, NodeStatus
from workers.definitions.dsl import (
    Node,
    WorkflowDefinition,
    branch,
    compile_workflow,
    parallel,
    step,
    unless,
    wait_for_approval,
    wait_for_event,
    when,
)
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
)
from workers.workflows.planner import plan as plan_actions

RUN_ID = "run_planner"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

PENDING = NodeStatus.PENDING
QUEUED = NodeStatus.QUEUED
RUNNING = NodeStatus.RUNNING
WAITING = NodeStatus.WAITING
COMPLETED = NodeStatus.COMPLETED
SKIPPED = NodeStatus.SKIPPED
CANCELLED = NodeStatus.CANCELLED

Change = NodeStatus | dict[str, Any]


def define(steps: Sequence[Node], **options: Any) -> WorkflowDefinition:
    return compile_workflow("wf", steps, known_tasks=lambda _: True, **options)


def states(definition: WorkflowDefinition, **changes: Change) -> dict[str, NodeRecord]:
    """Every node of ``definition`` pending, except those named: a status or record fields."""
    unknown = set(changes) - set(definition.nodes)
    assert not unknown, f"not nodes of the definition: {unknown}"
    records: dict[str, NodeRecord] = {}
    for position, node_id in enumerate(definition.nodes):
        record = NodeRecord(run_id=RUN_ID, node_id=node_id, position=position, status=PENDING)
        change = changes.get(node_id)
        if isinstance(change, NodeStatus):
            record = replace(record, status=change)
        elif change is not None:
            record = replace(record, **change)
        records[node_id] = record
    return records


def done(output: Any = None) -> dict[str, Any]:
    return {"status": COMPLETED, "output": output}


def failed(message: str = "boom", **error: Any) -> dict[str, Any]:
    return {"status": NodeStatus.FAILED, "error": RunError(message, **error)}


def opened(arm: str | None = None) -> dict[str, Any]:
    return {"status": RUNNING, "arm": arm}


def plan(
    definition: WorkflowDefinition,
    nodes: dict[str, NodeRecord],
    run_input: Any = None,
    now: datetime = NOW,
) -> list[Action]:
    return plan_actions(definition, nodes, context_for(RUN_ID, run_input, nodes), now)


def echo(node_id: str, **options: Any) -> Node:
    return step(node_id, "echo", **options)


def flag(name: str) -> Callable[[Any], bool]:
    return lambda w: bool((w.input or {}).get(name))


SEQUENCE = define([echo("one"), echo("two"), echo("three")])


# -- sequences and dependencies --------------------------------------------------------------


def test_the_first_step_of_a_sequence_starts_and_the_later_ones_wait() -> None:
    assert plan(SEQUENCE, states(SEQUENCE)) == [Start("one")]


def test_a_step_in_flight_holds_the_next_one_back() -> None:
    for status in (QUEUED, RUNNING):
        assert plan(SEQUENCE, states(SEQUENCE, one=status)) == []


def test_a_completed_dependency_lets_the_next_step_start() -> None:
    assert plan(SEQUENCE, states(SEQUENCE, one=done(1))) == [Start("two")]
    assert plan(SEQUENCE, states(SEQUENCE, one=done(1), two=done(2))) == [Start("three")]


def test_a_skipped_dependency_counts_as_done() -> None:
    assert plan(SEQUENCE, states(SEQUENCE, one=SKIPPED)) == [Start("two")]


def test_nodes_without_dependencies_start_at_once() -> None:
    definition = define([echo("a"), echo("b", depends_on=[]), echo("c", depends_on=[])])
    assert plan(definition, states(definition)) == [Start("a"), Start("b"), Start("c")]


def test_a_join_waits_for_every_dependency() -> None:
    definition = define(
        [
            echo("fetch"),
            echo("left", depends_on="fetch"),
            echo("right", depends_on="fetch"),
            echo("join", depends_on=["left", "right"]),
        ]
    )
    assert plan(definition, states(definition, fetch=done())) == [Start("left"), Start("right")]
    assert plan(definition, states(definition, fetch=done(), left=done(), right=RUNNING)) == []
    assert plan(definition, states(definition, fetch=done(), left=done(), right=done())) == [
        Start("join")
    ]


def test_a_step_whose_skip_is_true_is_skipped() -> None:
    definition = define([echo("maybe", skip=flag("skip")), echo("after")])
    assert plan(definition, states(definition), {"skip": True}) == [Skip("maybe")]
    assert plan(definition, states(definition), {"skip": False}) == [Start("maybe")]


def test_skip_sees_the_results_so_far() -> None:
    definition = define([echo("check"), echo("fix", skip=lambda w: w.results["check"]["healthy"])])
    assert plan(definition, states(definition, check=done({"healthy": True}))) == [Skip("fix")]
    assert plan(definition, states(definition, check=done({"healthy": False}))) == [Start("fix")]


def test_skip_is_not_asked_before_the_dependencies_are_done() -> None:
    asked: list[str] = []

    def skip(w: Any) -> bool:
        asked.append("asked")
        return True

    definition = define([echo("first"), echo("second", skip=skip)])
    assert plan(definition, states(definition, first=RUNNING)) == []
    assert asked == []


def test_nodes_whose_dependency_failed_are_skipped() -> None:
    definition = define(
        [
            parallel(
                "settle",
                [echo("a"), echo("b", depends_on="a"), echo("c", depends_on="b")],
                strategy="all_settled",
            )
        ]
    )
    nodes = states(definition, settle=opened(), a=failed())
    assert plan(definition, nodes) == [Skip("b", broken=True)]


def test_nodes_downstream_of_a_failure_are_skipped_too() -> None:
    definition = define(
        [
            parallel(
                "settle",
                [echo("a"), echo("b", depends_on="a"), echo("c", depends_on="b")],
                strategy="all_settled",
            )
        ]
    )
    nodes = states(definition, settle=opened(), a=failed(), b=CANCELLED)
    assert plan(definition, nodes) == [Skip("c", broken=True)]


def test_nodes_whose_dependency_was_cancelled_are_skipped() -> None:
    definition = define(
        [parallel("settle", [echo("a"), echo("b", depends_on="a")], strategy="all_settled")]
    )
    assert plan(definition, states(definition, settle=opened(), a=CANCELLED)) == [
        Skip("b", broken=True)
    ]


# -- parallel groups -------------------------------------------------------------------------


def both(strategy: Any = "all") -> WorkflowDefinition:
    return define(
        [
            parallel("both", [echo("left"), echo("right"), echo("third")], strategy=strategy),
            echo("after"),
        ]
    )


def test_a_parallel_group_opens_before_its_children_start() -> None:
    definition = both()
    assert plan(definition, states(definition)) == [Open("both", None)]


def test_the_children_of_an_open_group_start_together() -> None:
    definition = both()
    assert plan(definition, states(definition, both=opened())) == [
        Start("left"),
        Start("right"),
        Start("third"),
    ]


def test_a_group_waiting_on_its_dependency_keeps_its_children_pending() -> None:
    definition = define([echo("first"), parallel("group", [echo("a"), echo("b")])])
    assert plan(definition, states(definition, first=RUNNING)) == []


def test_a_group_whose_skip_is_true_is_skipped_and_so_are_its_children() -> None:
    definition = define([parallel("group", [echo("a"), echo("b")], skip=flag("skip"))])
    assert plan(definition, states(definition), {"skip": True}) == [Skip("group")]
    nodes = states(definition, group=SKIPPED)
    assert plan(definition, nodes) == [FinishRun("completed")]
    definition = define([parallel("group", [echo("a"), echo("b")]), echo("after")])
    assert plan(definition, states(definition, group=SKIPPED)) == [
        Skip("a"),
        Skip("b"),
        Start("after"),
    ]


def test_children_may_depend_on_each_other_inside_their_group() -> None:
    definition = define([parallel("group", [echo("a"), echo("b", depends_on="a")])])
    assert plan(definition, states(definition, group=opened())) == [Start("a")]
    assert plan(definition, states(definition, group=opened(), a=done())) == [Start("b")]


def test_strategy_all_fails_on_a_failed_child_and_cancels_the_active_ones() -> None:
    definition = both("all")
    nodes = states(
        definition, both=opened(), left=failed("left broke", code="x"), right=RUNNING, third=QUEUED
    )
    assert plan(definition, nodes) == [
        Fail("both", RunError("left broke", code="x")),
        Cancel("right"),
        Cancel("third"),
    ]


def test_strategy_all_does_not_cancel_children_that_are_already_done() -> None:
    definition = both("all")
    nodes = states(definition, both=opened(), left=done(), right=failed(), third=WAITING)
    assert plan(definition, nodes) == [Fail("both", RunError("boom")), Cancel("third")]


def test_strategy_all_fails_on_a_cancelled_child_without_an_error() -> None:
    definition = both("all")
    nodes = states(definition, both=opened(), left=CANCELLED, right=done(), third=done())
    (action,) = plan(definition, nodes)
    assert isinstance(action, Fail) and action.node_id == "both"
    assert "left" in action.error.message


def test_strategy_all_waits_while_any_child_is_active() -> None:
    definition = both("all")
    nodes = states(definition, both=opened(), left=done(1), right=done(2), third=RUNNING)
    assert plan(definition, nodes) == []


def test_strategy_all_completes_with_every_childs_output() -> None:
    definition = both("all")
    nodes = states(definition, both=opened(), left=done(1), right=done({"r": 2}), third=SKIPPED)
    assert plan(definition, nodes) == [
        Complete("both", {"left": 1, "right": {"r": 2}, "third": None})
    ]


def test_strategy_race_completes_with_the_winner_and_cancels_the_rest() -> None:
    definition = both("race")
    nodes = states(definition, both=opened(), left=RUNNING, right=done("won"), third=QUEUED)
    assert plan(definition, nodes) == [Complete("both", "won"), Cancel("left"), Cancel("third")]


def test_strategy_race_ignores_a_failed_child_while_others_run() -> None:
    definition = both("race")
    nodes = states(definition, both=opened(), left=failed(), right=RUNNING, third=RUNNING)
    assert plan(definition, nodes) == []
    nodes = states(definition, both=opened(), left=failed(), right=failed(), third=done("late"))
    assert plan(definition, nodes) == [Complete("both", "late")]


def test_strategy_race_fails_when_no_child_completes() -> None:
    definition = both("race")
    nodes = states(definition, both=opened(), left=failed(), right=CANCELLED, third=failed())
    assert plan(definition, nodes) == [Fail("both", RunError("no branch of race 'both' completed"))]


def test_strategy_all_settled_waits_for_every_child() -> None:
    definition = both("all_settled")
    nodes = states(definition, both=opened(), left=failed(), right=done(2), third=RUNNING)
    assert plan(definition, nodes) == []


def test_strategy_all_settled_completes_with_each_childs_outcome() -> None:
    definition = both("all_settled")
    nodes = states(definition, both=opened(), left=failed("nope"), right=done(2), third=SKIPPED)
    assert plan(definition, nodes) == [
        Complete(
            "both",
            {
                "left": {"status": "failed", "error": {"message": "nope"}},
                "right": {"status": "completed", "output": 2},
                "third": {"status": "skipped", "output": None},
            },
        )
    ]


def test_the_step_after_a_group_starts_once_the_group_completes() -> None:
    definition = both("all")
    nodes = states(definition, both=done({}), left=done(), right=done(), third=done())
    assert plan(definition, nodes) == [Start("after")]


def test_a_child_is_not_started_in_a_group_that_is_being_settled() -> None:
    definition = define(
        [parallel("group", [echo("a"), echo("b"), echo("c", depends_on="a")], strategy="all")]
    )
    nodes = states(definition, group=opened(), a=done(), b=failed())
    actions = plan(definition, nodes)
    assert Fail("group", RunError("boom")) in actions
    assert Start("c") not in actions


# -- branches --------------------------------------------------------------------------------


PICK = define(
    [
        branch(
            "pick",
            flag("big"),
            then=[echo("big1"), echo("big2")],
            otherwise=[echo("small")],
        ),
        echo("after"),
    ]
)


def test_a_branch_opens_the_arm_its_condition_picks() -> None:
    assert plan(PICK, states(PICK), {"big": True}) == [Open("pick", "then")]
    assert plan(PICK, states(PICK), {"big": False}) == [Open("pick", "otherwise")]


def test_the_condition_sees_the_results_so_far() -> None:
    definition = define(
        [
            echo("check"),
            branch(
                "pick",
                lambda w: w.results["check"] > 10,
                then=[echo("big")],
                otherwise=[echo("small")],
            ),
        ]
    )
    assert plan(definition, states(definition, check=done(11))) == [Open("pick", "then")]
    assert plan(definition, states(definition, check=done(3))) == [Open("pick", "otherwise")]


def test_a_pending_branch_keeps_both_arms_pending() -> None:
    definition = define([echo("first"), PICK.nodes["pick"].node])
    assert plan(definition, states(definition, first=RUNNING)) == []


def test_an_open_branch_starts_its_arm_and_skips_the_other() -> None:
    assert plan(PICK, states(PICK, pick=opened("then"))) == [Start("big1"), Skip("small")]
    assert plan(PICK, states(PICK, pick=opened("otherwise"))) == [
        Skip("big1"),
        Skip("big2"),
        Start("small"),
    ]


def test_a_branch_arm_runs_in_sequence() -> None:
    nodes = states(PICK, pick=opened("then"), big1=done(1), small=SKIPPED)
    assert plan(PICK, nodes) == [Start("big2")]


def test_a_branch_completes_with_its_last_members_output() -> None:
    nodes = states(PICK, pick=opened("then"), big1=done(1), big2=done(2), small=SKIPPED)
    assert plan(PICK, nodes) == [Complete("pick", 2)]
    nodes = states(PICK, pick=opened("otherwise"), big1=SKIPPED, big2=SKIPPED, small=done("s"))
    assert plan(PICK, nodes) == [Complete("pick", "s")]


def test_a_branch_fails_with_the_error_of_a_failed_member() -> None:
    nodes = states(PICK, pick=opened("then"), big1=failed("first broke"), small=SKIPPED)
    assert plan(PICK, nodes) == [Fail("pick", RunError("first broke")), Skip("big2")]


def test_a_branch_with_an_empty_arm_completes_with_nothing() -> None:
    definition = define([when("maybe", flag("extra"), [echo("bonus")]), echo("after")])
    assert plan(definition, states(definition), {"extra": False}) == [Open("maybe", "otherwise")]
    assert plan(definition, states(definition, maybe=opened("otherwise"))) == [
        Complete("maybe", None),
        Skip("bonus"),
    ]


def test_unless_runs_its_nodes_when_the_condition_is_false() -> None:
    definition = define([unless("guard", flag("dry_run"), [echo("write")])])
    assert plan(definition, states(definition), {"dry_run": False}) == [Open("guard", "otherwise")]
    assert plan(definition, states(definition, guard=opened("otherwise"))) == [Start("write")]
    assert plan(definition, states(definition, guard=opened("then"))) == [
        Complete("guard", None),
        Skip("write"),
    ]


def test_members_of_a_finished_branch_still_pending_are_skipped() -> None:
    definition = define(
        [parallel("outer", [PICK.nodes["pick"].node, echo("other")], strategy="all_settled")]
    )
    nodes = states(definition, outer=opened(), pick=failed(), big1=failed(), other=RUNNING)
    assert plan(definition, nodes) == [Skip("big2"), Skip("small")]


# -- waits -----------------------------------------------------------------------------------


def test_a_wait_parks_with_a_deadline_of_now_plus_its_timeout() -> None:
    definition = define([wait_for_approval("review", timeout=90), echo("publish")])
    assert plan(definition, states(definition)) == [
        Park("review", NOW + timedelta(seconds=90), None)
    ]


def test_a_wait_for_an_event_parks_on_that_event() -> None:
    definition = define([wait_for_event("hook", event="payment.received", timeout=60)])
    assert plan(definition, states(definition)) == [
        Park("hook", NOW + timedelta(seconds=60), "payment.received")
    ]


def test_a_wait_without_a_timeout_parks_without_a_deadline() -> None:
    definition = define([wait_for_approval("review")])
    assert plan(definition, states(definition)) == [Park("review", None, None)]


def test_a_waiting_node_before_its_deadline_is_left_alone() -> None:
    definition = define([wait_for_approval("review", timeout=90), echo("publish")])
    nodes = states(definition, review={"status": WAITING, "deadline": NOW + timedelta(seconds=1)})
    assert plan(definition, nodes) == []


def test_an_expired_waiting_node_fails_with_code_timeout() -> None:
    definition = define([wait_for_approval("review", timeout=90), echo("publish")])
    for deadline in (NOW, NOW - timedelta(seconds=5)):
        nodes = states(definition, review={"status": WAITING, "deadline": deadline})
        assert plan(definition, nodes) == [
            Fail("review", RunError("wait 'review' timed out", code="timeout"))
        ]


def test_a_waiting_node_without_a_deadline_never_expires() -> None:
    definition = define([wait_for_approval("review")])
    nodes = states(definition, review=WAITING)
    assert plan(definition, nodes, now=NOW + timedelta(days=365)) == []


def test_an_approved_wait_lets_the_next_step_start() -> None:
    definition = define([wait_for_approval("review", timeout=90), echo("publish")])
    nodes = states(definition, review=done({"approved": True}))
    assert plan(definition, nodes) == [Start("publish")]


# -- finishing the run -----------------------------------------------------------------------


def test_a_failed_root_fails_the_run_naming_the_node() -> None:
    nodes = states(SEQUENCE, one=done(), two=failed("bad step", code="oops", detail={"x": 1}))
    (finish,) = plan(SEQUENCE, nodes)
    assert isinstance(finish, FinishRun) and finish.status == "failed"
    assert finish.error == RunError(
        "node 'two' failed: bad step", code="oops", detail={"x": 1, "node_id": "two"}
    )
    assert finish.output is None


def test_a_failed_root_without_detail_gets_one_naming_the_node() -> None:
    nodes = states(SEQUENCE, one=failed("bad"))
    assert plan(SEQUENCE, nodes) == [
        FinishRun("failed", error=RunError("node 'one' failed: bad", detail={"node_id": "one"}))
    ]


def test_a_cancelled_root_without_an_error_fails_the_run() -> None:
    (finish,) = plan(SEQUENCE, states(SEQUENCE, one=CANCELLED))
    assert isinstance(finish, FinishRun) and finish.status == "failed"
    assert finish.error is not None
    assert finish.error.message.startswith("node 'one' failed:")
    assert finish.error.detail == {"node_id": "one"}


def test_a_failed_group_fails_the_run_and_nothing_else_is_planned() -> None:
    definition = both("all")
    nodes = states(definition, both=failed("left broke"), left=failed("left broke"))
    (finish,) = plan(definition, nodes)
    assert isinstance(finish, FinishRun) and finish.status == "failed"
    assert finish.error is not None and finish.error.detail == {"node_id": "both"}


def test_a_failed_root_ends_the_run_even_while_other_roots_run() -> None:
    definition = define([echo("a"), echo("b", depends_on=[])])
    (finish,) = plan(definition, states(definition, a=failed(), b=RUNNING))
    assert isinstance(finish, FinishRun) and finish.status == "failed"


def test_the_run_completes_with_the_last_roots_output() -> None:
    nodes = states(SEQUENCE, one=done(1), two=done(2), three=done({"n": 3}))
    assert plan(SEQUENCE, nodes) == [FinishRun("completed", output={"n": 3})]


def test_a_skipped_last_root_completes_the_run_without_output() -> None:
    nodes = states(SEQUENCE, one=done(1), two=done(2), three=SKIPPED)
    assert plan(SEQUENCE, nodes) == [FinishRun("completed", output=None)]


def test_the_run_completes_with_the_value_of_the_output_callable() -> None:
    definition = define(
        [echo("one"), echo("two")],
        output=lambda w: {"sum": w.results["one"] + w.results["two"], "input": w.input},
    )
    nodes = states(definition, one=done(1), two=done(2))
    assert plan(definition, nodes, {"k": "v"}) == [
        FinishRun("completed", output={"sum": 3, "input": {"k": "v"}})
    ]


def test_the_run_does_not_finish_while_a_root_is_active() -> None:
    for status in (QUEUED, RUNNING, WAITING):
        nodes = states(SEQUENCE, one=done(1), two=done(2), three=status)
        assert plan(SEQUENCE, nodes) == []


def test_a_whole_workflow_walks_to_completion() -> None:
    """Apply each plan's actions as the engine would, answering steps with their id."""
    definition = define(
        [
            echo("fetch"),
            parallel("both", [echo("left"), echo("right")]),
            branch("pick", flag("big"), then=[echo("big")], otherwise=[echo("small")]),
        ]
    )
    nodes = states(definition)
    for _ in range(20):
        actions = plan(definition, nodes, {"big": True})
        if len(actions) == 1 and isinstance(actions[0], FinishRun):
            break
        for action in actions:
            record = nodes[action.node_id]  # type: ignore[union-attr]
            if isinstance(action, Start):
                nodes[action.node_id] = replace(record, status=COMPLETED, output=action.node_id)
            elif isinstance(action, Open):
                nodes[action.node_id] = replace(record, status=RUNNING, arm=action.arm)
            elif isinstance(action, Complete):
                nodes[action.node_id] = replace(record, status=COMPLETED, output=action.output)
            elif isinstance(action, Skip):
                nodes[action.node_id] = replace(record, status=SKIPPED)
            else:
                raise AssertionError(f"unexpected {action}")
    assert actions == [FinishRun("completed", output="big")]
    assert {k: n.status.value for k, n in nodes.items()} == {
        "fetch": "completed",
        "both": "completed",
        "left": "completed",
        "right": "completed",
        "pick": "completed",
        "big": "completed",
        "small": "skipped",
    }
    assert nodes["both"].output == {"left": "left", "right": "right"}
