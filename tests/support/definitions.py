"""Definitions that only the test workers load (RUNS_DEFINITIONS includes this module)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from workers.definitions.errors import NonRetryableError
from workers.definitions.registry import task
from workers.execution.context import TaskContext


@task("test/ticker")
def ticker(ctx: TaskContext) -> dict[str, Any]:
    """Emits config.n progress events, config.interval seconds apart (a run to follow)."""
    n, interval = int(ctx.config.get("n", 5)), float(ctx.config.get("interval", 0.2))
    for i in range(n):
        ctx.emit("PROGRESS_REPORTED", {"done": i + 1, "total": n})
        ctx.flush_events()
        time.sleep(interval)
    return {"ticks": n}


@task("test/async")
async def async_echo(ctx: TaskContext) -> Any:
    await asyncio.sleep(0.01)
    return {"async": True, "config": ctx.config}


@task("test/observable")
def observable(ctx: TaskContext) -> dict[str, Any]:
    ctx.logger.info("first line")
    ctx.emit("PROGRESS_REPORTED", {"done": 1, "total": 2})
    ctx.add_artifact("report.csv", uri="s3://bucket/report.csv", content_type="text/csv")
    ctx.logger.warning("second line")
    return {"ok": True}


class Numbers(BaseModel):
    n: int


class Doubled(BaseModel):
    doubled: int


@task("test/typed", input_model=Numbers, output_model=Doubled)
def typed(ctx: TaskContext) -> Doubled:
    assert isinstance(ctx.input, Numbers)
    return Doubled(doubled=ctx.input.n * 2)


@task("test/bad-output")
def bad_output(ctx: TaskContext) -> Any:
    return {"not json": object()}


@task("test/crash")
def crash(ctx: TaskContext) -> None:
    raise ValueError("boom")


UNCLEAN = "lone \ud800 nul \x00 end"


@task("test/unclean")
def unclean(ctx: TaskContext) -> Any:
    """Everything a task hands back carries text that is not valid Unicode, and NaN."""
    ctx.logger.info(UNCLEAN)
    ctx.emit("UNCLEAN_REPORTED", {UNCLEAN: UNCLEAN, "nan": float("nan")})
    ctx.add_artifact(UNCLEAN, metadata={"inf": float("inf")})
    return {UNCLEAN: [UNCLEAN, float("-inf")]}


@task("test/unclean-failure")
def unclean_failure(ctx: TaskContext) -> None:
    raise NonRetryableError(UNCLEAN, code="unclean", detail={UNCLEAN: float("nan")})


# -- workflows -----------------------------------------------------------------------------

from workers.definitions.dsl import (  # noqa: E402
    Retry,
    branch,
    parallel,
    step,
    wait_for_approval,
    wait_for_event,
    when,
)
from workers.definitions.registry import workflow  # noqa: E402


def _flaky(ctx: TaskContext) -> dict[str, Any]:
    if ctx.attempt < 3:
        raise RuntimeError(f"flaky attempt {ctx.attempt}")
    return {"attempts": ctx.attempt}


def _spawn_child(ctx: TaskContext) -> dict[str, Any]:
    return {"child": ctx.start_child("task:echo", {"from": "parent"})}


workflow(
    "test/sequence",
    steps=[
        step("one", "echo", input=lambda w: {"n": (w.input or {}).get("n", 1)}),
        step("two", lambda ctx: {"n": ctx.results["one"]["n"] + 1}),
        step("three", lambda ctx: {"n": ctx.results["two"]["n"] * 10}),
    ],
)
workflow(
    "test/parallel-sleeps",
    steps=[
        parallel(
            "both",
            [
                step("left", "sleep", input={"seconds": 1}),
                step("right", "sleep", input={"seconds": 1}),
            ],
        )
    ],
)
workflow(
    "test/race",
    steps=[
        parallel(
            "first",
            [
                step("fast", "echo", input={"won": "fast"}),
                step("slow", "sleep", input={"seconds": 20}),
            ],
            strategy="race",
        )
    ],
)
workflow(
    "test/all-settled",
    steps=[
        parallel(
            "settle",
            [step("good", "echo", input={"ok": 1}), step("bad", "fail", input={"message": "no"})],
            strategy="all_settled",
        ),
        step("after", lambda ctx: {"seen": sorted(ctx.results["settle"])}),
    ],
)
workflow(
    "test/branch",
    steps=[
        branch(
            "pick",
            lambda w: bool((w.input or {}).get("big")),
            then=[step("big", "echo", input={"size": "big"})],
            otherwise=[step("small", "echo", input={"size": "small"})],
        ),
        when(
            "extra",
            lambda w: bool((w.input or {}).get("extra")),
            [step("bonus", "echo", input={"b": 1})],
        ),
    ],
    output=lambda w: {"pick": w.results["pick"], "statuses": w.statuses},
)
workflow(
    "test/retry",
    steps=[step("flaky", _flaky, retry=Retry(max_attempts=3, backoff="fixed", initial_delay=0.1))],
)
workflow(
    "test/failing",
    steps=[
        step("ok", "echo", input={}),
        step("boom", "fail", input={"message": "bad step"}),
        step("never", "echo"),
    ],
)
workflow(
    "test/approval",
    steps=[
        wait_for_approval("review", timeout=60),
        step("publish", lambda ctx: {"approved": ctx.results["review"]["approved"]}),
    ],
)
workflow("test/approval-timeout", steps=[wait_for_approval("gate", timeout=1)])
workflow(
    "test/event",
    steps=[
        wait_for_event("hook", event="payment.received", timeout=60),
        step("use", lambda ctx: ctx.results["hook"]),
    ],
)
workflow("test/long", steps=[step("nap", "sleep", input={"seconds": 60}), step("after", "echo")])
workflow("test/child", steps=[step("spawn", _spawn_child)])
workflow(
    "test/crashable",
    steps=[
        step("before", "echo", input={"x": 1}),
        step("slow", "sleep", input={"seconds": 3}, retry=Retry(max_attempts=2, initial_delay=0.1)),
        step("after", "echo", input={"y": 2}),
    ],
)


def _spawn_sleeper_and_wait(ctx: TaskContext) -> dict[str, Any]:
    child = ctx.start_child("task:sleep", {"seconds": 60})
    ctx.emit("CHILD_STARTED", {"child": child})
    ctx.wait(60)
    return {"child": child}


workflow("test/parent-of-sleeper", steps=[step("spawn", _spawn_sleeper_and_wait)])


@task("test/waits-on-child")
def waits_on_child(ctx: TaskContext) -> dict[str, Any]:
    """Starts task:echo through ``ctx.runs`` and waits for it (the SDK's surface in a task)."""
    created = ctx.runs.create_task_run("task:echo", config={"from": ctx.run_id})
    child = ctx.runs.wait(created.run.run_id, timeout=30)
    return {
        "child": child.run_id,
        "status": child.status,
        "parent": child.parent_run_id,
        "output": child.output,
    }
