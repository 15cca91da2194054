"""Workflows the workflow benchmark runs (RUNS_DEFINITIONS includes this module)."""

from __future__ import annotations

from workers.definitions.dsl import parallel, step
from workers.definitions.registry import workflow
from workers.execution.context import TaskContext


def _noop(ctx: TaskContext) -> None:
    return None


workflow("bench/seq20", steps=[step(f"s{i:02d}", _noop) for i in range(20)])
workflow(
    "bench/parallel-1s",
    steps=[
        parallel(
            "both",
            [step("a", "sleep", input={"seconds": 1}), step("b", "sleep", input={"seconds": 1})],
        )
    ],
)
