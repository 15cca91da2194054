"""Runtime adapters: run a definition and turn what happened into an Outcome."""

from __future__ import annotations

import asyncio
import contextlib
import json
import traceback
from typing import Any

from pydantic import BaseModel, ValidationError

from runs.domain.runs import ErrorCode, Outcome, RunError, RunStatus
from workers.definitions.errors import OutputError, RunCancelled, RunInterrupted, TaskFailed
from workers.definitions.registry import TaskDefinition
from workers.execution.commands import run_command
from workers.execution.context import TaskContext, failed_outcome
from workers.execution.guard import Interrupter


def run_definition(
    definition: TaskDefinition,
    ctx: TaskContext,
    interrupter: Interrupter | None,
    *,
    grace_seconds: float,
    max_result_bytes: int,
) -> Outcome:
    """Run a task through its adapter: a subprocess for a command, else an in-process call."""
    if definition.command is not None:
        return run_command(
            definition.command, ctx, grace_seconds=grace_seconds, max_result_bytes=max_result_bytes
        )
    return run_in_process(definition, ctx, interrupter)


def run_in_process(
    definition: TaskDefinition, ctx: TaskContext, interrupter: Interrupter | None = None
) -> Outcome:
    """Call the task function in this process: exit code 0 on success, 1 on failure.

    With an ``interrupter``, the worker may stop the call by raising ``RunInterrupted`` in it.
    """
    try:
        with interrupter.armed() if interrupter is not None else contextlib.nullcontext():
            if definition.input_model is not None:
                ctx.input = definition.input_model.model_validate(ctx.config)
            result = definition.fn(ctx)
            if definition.is_async:
                result = asyncio.run(result)
        output = _to_json(result, definition.output_model)
    except RunInterrupted:
        return failed_outcome(ctx, ErrorCode.INTERRUPTED, "the worker stopped the task", None)
    except ValidationError as exc:
        return failed_outcome(
            ctx,
            ErrorCode.INVALID_INPUT,
            _validation_message(exc),
            exc.errors(include_url=False),
            retryable=False,
        )
    except RunCancelled:
        return Outcome(
            RunStatus.CANCELLED,
            error=RunError("Run cancelled", code=ErrorCode.CANCELLED),
            logs=ctx.logs,
            artifacts=ctx.artifacts,
            exit_code=1,
        )
    except TaskFailed as exc:
        return failed_outcome(ctx, exc.code, str(exc), exc.detail, retryable=exc.retryable)
    except OutputError as exc:
        return failed_outcome(ctx, ErrorCode.INVALID_OUTPUT, str(exc), None, retryable=False)
    except Exception as exc:
        return failed_outcome(
            ctx,
            ErrorCode.TASK_ERROR,
            str(exc) or type(exc).__name__,
            {"type": type(exc).__name__, "traceback": traceback.format_exc(limit=20)},
        )
    return Outcome(
        RunStatus.COMPLETED, output=output, logs=ctx.logs, artifacts=ctx.artifacts, exit_code=0
    )


def _to_json(result: Any, model: type[BaseModel] | None) -> Any:
    if model is not None:
        try:
            result = model.model_validate(result)
        except ValidationError as exc:
            raise OutputError(f"the task's result does not match its output model: {exc}") from exc
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise OutputError(f"the task's result is not JSON-serialisable: {exc}") from exc
    return result


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    return f"config does not match the task's input model: {where}: {first['msg']}"
