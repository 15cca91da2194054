"""The process runtime adapter: run a definition's command as a subprocess.

The command runs in a session (process group) of its own, with only the allow-listed
environment plus ``RUNS_RUN_ID``, ``RUNS_ATTEMPT``, ``RUNS_CONFIG`` (the run's config as JSON)
and ``RUNS_CONFIG_FILE`` (the same, as a file), and ``RUNS_RESULT_FILE`` (where it may write a
JSON result, which becomes ``output``). Its
stdout and stderr stream into the run's logs line by line. A stop sends SIGTERM to the whole
group, then SIGKILL after the grace period; whatever of the group is left when the command
exits is killed too, so no process outlives its run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from runs.domain.runs import ErrorCode, Outcome, RunStatus
from workers.definitions.specs import Command
from workers.execution.context import TaskContext, failed_outcome


def run_command(
    command: Command, ctx: TaskContext, *, grace_seconds: float, max_result_bytes: int
) -> Outcome:
    try:
        argv = _argv(command, ctx.config)
    except Exception as exc:
        message = f"cannot build the command line from the run's config: {exc!r}"
        return failed_outcome(ctx, ErrorCode.INVALID_INPUT, message, retryable=False)
    with tempfile.TemporaryDirectory(prefix="runs-") as scratch:
        env = _environment(command, ctx, Path(scratch))
        try:
            process = subprocess.Popen(
                _resolve(argv),
                cwd=command.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            return failed_outcome(
                ctx, ErrorCode.PROCESS_ERROR, f"cannot start {argv[0]!r}: {exc}", retryable=False
            )
        readers = [
            threading.Thread(target=_pump, args=(stream, ctx), daemon=True)
            for stream in (process.stdout, process.stderr)
        ]
        for reader in readers:
            reader.start()
        code = _wait(process, ctx, grace_seconds)
        _kill_group(process.pid, signal.SIGKILL)  # stragglers left by the command
        for reader in readers:
            reader.join(timeout=5)
        if code != 0:
            message = f"command exited with code {code}"
            return failed_outcome(
                ctx, ErrorCode.PROCESS_FAILED, message, {"argv": argv}, exit_code=code
            )
        return _completed(ctx, Path(env["RUNS_RESULT_FILE"]), max_result_bytes)


def _argv(command: Command, config: dict[str, Any]) -> list[str]:
    argv = list(command.argv(config) if callable(command.argv) else command.argv)
    if not argv or not all(isinstance(part, str) for part in argv):
        raise ValueError(f"argv must be a non-empty list of strings, not {argv!r}")
    return argv


def _resolve(argv: list[str]) -> list[str]:
    found = shutil.which(argv[0]) if os.sep not in argv[0] else None
    return [found or argv[0], *argv[1:]]


_MAX_CONFIG_ENV = 64 * 1024  # larger configs are passed by file only (kernel argument limits)


def _environment(command: Command, ctx: TaskContext, scratch: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in command.env_allow if name in os.environ}
    env.update(command.env)
    config = json.dumps(ctx.config)
    config_path = scratch / "config.json"
    config_path.write_text(config)
    env.update(
        RUNS_RUN_ID=ctx.run_id,
        RUNS_ATTEMPT=str(ctx.attempt),
        RUNS_CONFIG_FILE=str(config_path),
        RUNS_RESULT_FILE=str(scratch / "result.json"),
    )
    if len(config) <= _MAX_CONFIG_ENV:
        env["RUNS_CONFIG"] = config
    return env


def _pump(stream: IO[bytes] | None, ctx: TaskContext) -> None:
    if stream is None:
        return
    with stream:
        for raw in iter(stream.readline, b""):
            ctx.log_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))


def _wait(process: subprocess.Popen[bytes], ctx: TaskContext, grace_seconds: float) -> int:
    """The exit code (128 + signal number when a signal ended it), stopping it when asked."""
    terminated_at: float | None = None
    killed = False
    while True:
        try:
            code = process.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
        if ctx.cancelled and terminated_at is None:
            terminated_at = time.monotonic()
            _kill_group(process.pid, signal.SIGTERM)
        elif (
            terminated_at is not None
            and not killed
            and time.monotonic() - terminated_at >= grace_seconds
        ):
            killed = True
            _kill_group(process.pid, signal.SIGKILL)
    return 128 - code if code < 0 else code


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _completed(ctx: TaskContext, result_path: Path, max_result_bytes: int) -> Outcome:
    output = None
    if result_path.exists() and result_path.stat().st_size > 0:
        size = result_path.stat().st_size
        if size > max_result_bytes:
            message = f"the result file is {size} bytes; at most {max_result_bytes} are stored"
            return failed_outcome(
                ctx, ErrorCode.OUTPUT_TOO_LARGE, message, retryable=False, exit_code=0
            )
        try:
            output = json.loads(result_path.read_bytes())
        except ValueError as exc:
            message = f"the result file (RUNS_RESULT_FILE) is not JSON: {exc}"
            return failed_outcome(
                ctx, ErrorCode.INVALID_OUTPUT, message, retryable=False, exit_code=0
            )
    return Outcome(
        RunStatus.COMPLETED, output=output, logs=ctx.logs, artifacts=ctx.artifacts, exit_code=0
    )
