"""Tasks for the durability tests: flaky, stubborn, slow, chatty and process-backed ones.

Only the durability worker pools load this module (RUNS_DEFINITIONS)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import redis

from workers.definitions.errors import NonRetryableError
from workers.definitions.registry import command, task
from workers.execution.context import TaskContext


def _counter(ctx: TaskContext, name: str = "counter") -> None:
    """Count executions in Redis under config[name], when given."""
    key = ctx.config.get(name)
    if key:
        client = redis.Redis.from_url(os.environ["RUNS_REDIS_URL"])
        client.incr(key)
        client.expire(key, 3600)
        client.close()


@task("durable/flaky")
def flaky(ctx: TaskContext) -> dict[str, Any]:
    """Fails until attempt ``config["succeed_on"]`` (default 2)."""
    _counter(ctx)
    if ctx.attempt < ctx.config.get("succeed_on", 2):
        raise RuntimeError(f"flaky attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@task("durable/flaky-by-default", backoff_limit=2)
def flaky_by_default(ctx: TaskContext) -> dict[str, Any]:
    """Like durable/flaky, with a definition default of two retries."""
    return flaky(ctx)


@task("durable/fatal")
def fatal(ctx: TaskContext) -> None:
    _counter(ctx)
    raise NonRetryableError("the input can never work", code="bad_data")


@task("durable/blind-sleep")
def blind_sleep(ctx: TaskContext) -> dict[str, Any]:
    """Sleeps without ever looking at the cancel flag."""
    _counter(ctx)
    time.sleep(ctx.config.get("seconds", 30))
    return {"slept": ctx.config.get("seconds", 30), "pid": os.getpid()}


@task("durable/spin")
def spin(ctx: TaskContext) -> None:
    """A tight CPU loop that never checks the flag and swallows ordinary exceptions."""
    _counter(ctx)
    n = 0
    while True:
        try:
            n += 1
        except Exception:
            continue


@task("durable/immortal")
def immortal(ctx: TaskContext) -> None:
    """Ignores the flag and even the worker's interrupt: only killing its process stops it."""
    _counter(ctx)
    while True:
        try:
            while True:
                pass
        except BaseException:
            continue


@task("durable/polite-sleep", timeout_seconds=1)
def polite_sleep(ctx: TaskContext) -> dict[str, Any]:
    """Sleeps with ctx.wait (stops at once when told); its definition times out after 1 s."""
    ctx.wait(ctx.config.get("seconds", 30))
    ctx.raise_if_cancelled()
    return {"slept": True}


@task("durable/pid")
def pid(ctx: TaskContext) -> dict[str, Any]:
    _counter(ctx)
    time.sleep(ctx.config.get("seconds", 0))
    return {"pid": os.getpid()}


@task("durable/big-output")
def big_output(ctx: TaskContext) -> str:
    return "x" * int(ctx.config.get("size", 10_000))


@task("durable/chatty")
def chatty(ctx: TaskContext) -> dict[str, Any]:
    for i in range(int(ctx.config.get("lines", 1000))):
        ctx.logger.info("line %d of a chatty task", i)
    return {"ok": True}


PY = sys.executable

command(
    "durable/cmd-echo",
    [
        PY,
        "-c",
        "import json, os, sys\n"
        "config = json.loads(os.environ['RUNS_CONFIG'])\n"
        "print('hello from', os.environ['RUNS_RUN_ID'], flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "seen = {k: os.environ.get(k) for k in ('RUNS_TEST_VISIBLE', 'RUNS_TEST_HIDDEN')}\n"
        "result = {'config': config, 'env': seen, 'cwd': os.getcwd(),\n"
        "          'attempt': int(os.environ['RUNS_ATTEMPT'])}\n"
        "open(os.environ['RUNS_RESULT_FILE'], 'w').write(json.dumps(result))\n",
    ],
    env_allow=["PATH", "RUNS_TEST_VISIBLE"],
    env={"RUNS_TEST_FIXED": "1"},
    cwd="/tmp",
)

command("durable/cmd-fail", ["sh", "-c", "echo failing; exit 3"])

command("durable/cmd-bad-result", ["sh", "-c", 'echo "not json" > "$RUNS_RESULT_FILE"'])

command(
    "durable/cmd-argv",
    lambda config: ["sh", "-c", 'printf "%s" "$1" > "$RUNS_RESULT_FILE"', "sh", config["json"]],
)

# A process tree: a shell with two background sleepers. Every process of it carries
# RUNS_RUN_ID in its environment, which is how the tests look for survivors.
command("durable/cmd-tree", ["sh", "-c", "sleep 300 & sleep 300 & echo started; wait"])

# The same tree, but the shell and its children ignore SIGTERM: only SIGKILL stops them.
command(
    "durable/cmd-stubborn-tree",
    ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & echo started; wait; wait"],
)


# -- workflow steps run under the same guard ------------------------------------------------

from workers.definitions.dsl import step  # noqa: E402
from workers.definitions.registry import workflow  # noqa: E402

workflow("durable/spinning-step", steps=[step("spin", spin, timeout=1)])
workflow("durable/command-step", steps=[step("tree", "durable/cmd-tree")])


@task("durable/work")
def work(ctx: TaskContext) -> dict[str, Any]:
    """Works ``config["seconds"]`` (stopping early when told to), then counts a finished
    execution under ``config["finished"]``; starts are counted under ``config["counter"]``."""
    _counter(ctx)
    ctx.wait(float(ctx.config.get("seconds", 1)))
    ctx.raise_if_cancelled()
    _counter(ctx, "finished")
    return {"pid": os.getpid(), "attempt": ctx.attempt}


# A step of a durable/work task that outlasts a short drain time; no retries, so a counted
# attempt of the step would fail the run.
workflow(
    "durable/steady",
    steps=[
        step("work", "durable/work", input=lambda w: dict(w.input or {})),
        step("after", "durable/work", input={"seconds": 0}),
    ],
)


def _journal(ctx: TaskContext, what: str) -> None:
    """One line in the append-only file ``config["journal"]``: what happened to which run,
    written outside the run system, so that a fault script counts real executions."""
    path = ctx.config.get("journal")
    if path:
        unit = f"{ctx.run_id}/{ctx.config['step']}" if "step" in ctx.config else ctx.run_id
        line = f"{what} {unit} {ctx.attempt} {time.time():.6f}\n".encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)


@task("durable/journaled")
def journaled(ctx: TaskContext) -> dict[str, Any]:
    """Works ``config["seconds"]`` and writes ``start`` and ``end`` lines to its journal; the
    ``end`` line is the task's last act, so a run whose code ran to the end has one."""
    _journal(ctx, "start")
    ctx.wait(float(ctx.config.get("seconds", 0.5)))
    ctx.raise_if_cancelled()
    ctx.logger.info("worked %s s", ctx.config.get("seconds", 0.5))
    _journal(ctx, "end")
    return {"worked": ctx.config.get("seconds", 0.5), "run_id": ctx.run_id}


# Two journaled steps: their journal lines name the run and the step ("<run_id>/first").
workflow(
    "durable/journaled-steps",
    steps=[
        step("first", "durable/journaled", input=lambda w: {**(w.input or {}), "step": "first"}),
        step("second", "durable/journaled", input=lambda w: {**(w.input or {}), "step": "second"}),
    ],
)
