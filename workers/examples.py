"""Example definitions loaded by default (RUNS_DEFINITIONS=workers.examples)."""

from __future__ import annotations

from typing import Any

from workers.adapters import TaskFailed
from workers.context import TaskContext
from workers.registry import task


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
