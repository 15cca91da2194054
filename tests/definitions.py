"""Definitions that only the test workers load (RUNS_DEFINITIONS includes this module)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from workers.context import TaskContext
from workers.registry import task


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
