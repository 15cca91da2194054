"""Example definitions loaded by default (RUNS_DEFINITIONS=workers.examples)."""

from __future__ import annotations

from typing import Any

from workers.definitions.dsl import branch, parallel, step
from workers.definitions.errors import TaskFailed
from workers.definitions.registry import schedule, task, workflow
from workers.execution.context import TaskContext


@task("echo", name="Echo", description="Returns its config unchanged.")
def echo(ctx: TaskContext) -> Any:
    return ctx.config


@task("sleep", name="Sleep", description="Sleeps config.seconds (default 1); stops when cancelled.")
def sleep(ctx: TaskContext) -> dict[str, Any]:
    seconds = float(ctx.config.get("seconds", 1))
    ctx.logger.info("sleeping %.3f s", seconds)
    ctx.wait(seconds)
    ctx.raise_if_cancelled()
    ctx.logger.info("awake")
    return {"slept": seconds}


@task("fail", name="Fail", description="Always fails, with config.message if given.")
def fail(ctx: TaskContext) -> None:
    message = str(ctx.config.get("message", "this task always fails"))
    ctx.logger.error("failing on purpose: %s", message)
    raise TaskFailed(message, code="example_failure", detail={"config": ctx.config})


# -- workflows -----------------------------------------------------------------------------


@task("uppercase", name="Uppercase", description="Returns config.text in upper case.")
def uppercase(ctx: TaskContext) -> dict[str, Any]:
    return {"text": str(ctx.config.get("text", "")).upper()}


def _count_words(ctx: TaskContext) -> dict[str, Any]:
    text = ctx.results["fetch"]["text"]
    ctx.logger.info("counting words of %d characters", len(text))
    return {"words": len(text.split())}


def _summarize(ctx: TaskContext) -> dict[str, Any]:
    return {"summary": f"{ctx.results['analyze']['words']} words"}


workflow(
    "demo-pipeline",
    steps=[
        step(
            "fetch",
            "echo",
            input=lambda w: {"text": str((w.input or {}).get("text", "hello runs"))},
        ),
        step("analyze", _count_words),
        step("summarize", _summarize),
    ],
    description="Three sequential steps; completes with any input.",
)


def _count_words_of_input(ctx: TaskContext) -> dict[str, Any]:
    return {"words": len(str((ctx.input or {}).get("text", "")).split())}


def _is_long(w: Any) -> bool:
    return bool(w.results["measure"]["words"] > 3)


workflow(
    "fan-out",
    steps=[
        parallel(
            "prepare",
            [
                step(
                    "shout", "uppercase", input=lambda w: {"text": (w.input or {}).get("text", "")}
                ),
                step("measure", _count_words_of_input),
            ],
        ),
        branch(
            "route",
            _is_long,
            then=[step("long", "echo", input={"route": "long"})],
            otherwise=[step("short", "echo", input={"route": "short"})],
        ),
    ],
    output=lambda w: {"shout": w.results["shout"]["text"], "route": w.results["route"]["route"]},
    description="A parallel group, then a branch on its result.",
)

# A schedule written beside the tasks: workers sync it into RUNS_SOURCE_SCHEDULES_PROJECT
# (`runs dev`: the demo project) when they start.
schedule(
    "hourly-echo",
    cron="0 * * * *",
    target="task:echo",
    config={"from": "the hourly-echo schedule"},
    concurrency_policy="Forbid",
)
