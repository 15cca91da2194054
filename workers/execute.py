"""The job: claim the run, resolve its definition, run one attempt through an adapter under a
guard (lease, timeout, stop), then record the outcome: a retry, the terminal record, or (for a
run cancelled meanwhile) the time the work stopped."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from runs.domain.events import NewEvent, attempt_started_event, started_events
from runs.domain.runs import ErrorCode, Outcome, Run, RunError, RunRef, RunStatus
from runs.json_logs import bind_run_fields, run_log_fields
from runs.service import json_size
from runs.transient import TRANSIENT_ERRORS
from workers.adapters import run_definition
from workers.context import TaskContext, failed_outcome
from workers.guard import AttemptGuard, Interrupter, StopReason
from workers.policy import AttemptPolicy, backoff_delay, policy_for
from workers.project_runs import project_runs
from workers.registry import TaskDefinition
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")


def execute(runtime: WorkerRuntime, ref: RunRef) -> str:
    """Execute one attempt of the run ``ref``; returns what happened, for the worker's log."""
    run = runtime.attempts.claim(
        ref, worker=runtime.worker_id, lease_seconds=runtime.settings.worker_lease_seconds
    )
    if run is None:
        return "skipped: not pending"  # a duplicate message, or a run already running or ended
    bind_run_fields(**run_log_fields(run))  # until the job ends (workers/celery_app.py)
    definition = runtime.registry.find(run.target)
    policy = policy_for(runtime.settings, definition, run)
    if definition is None:
        message = f"no definition for target {run.target!r} in this worker"
        return _end(runtime, run, _failure(message, ErrorCode.UNKNOWN_TARGET))
    if policy.waited_too_long(run):
        message = f"the run waited more than {policy.queue_ttl_seconds:g} s for a worker"
        return _end(runtime, run, _failure(message, ErrorCode.EXPIRED))
    return Attempt(runtime, run, definition, policy).run()


class Attempt:
    def __init__(
        self,
        runtime: WorkerRuntime,
        run: Run,
        definition: TaskDefinition,
        policy: AttemptPolicy,
    ) -> None:
        self._rt = runtime
        self._run = run
        self._definition = definition
        self._policy = policy
        self._flag = threading.Event()
        self._ctx = TaskContext(
            run_id=run.run_id,
            project_id=run.project_id,
            target=run.target,
            attempt=run.attempt,
            config=run.config,
            input=run.input,
            publish=self._publish,
            cancel_event=self._flag,
            max_log_bytes=runtime.settings.max_log_bytes,
            project_runs=lambda flag: project_runs(runtime, run, flag),
        )

    def run(self) -> str:
        settings = self._rt.settings
        interrupter = Interrupter() if self._definition.command is None else None
        guard = AttemptGuard(
            flag=self._flag,
            renew=lambda: self._rt.attempts.renew(self._run, settings.worker_lease_seconds),
            lease_seconds=settings.worker_lease_seconds,
            timeout_seconds=self._policy.timeout_seconds,
            grace_seconds=settings.cancel_grace_seconds,
            interrupter=interrupter,
            abandon=self._abandon,
        )
        with self._rt.monitor.watch(self._run.ref, self._flag), guard:
            if not self._open():
                guard.returned()
                self._rt.attempts.record_stop(self._run)
                return "skipped: cancelled before it started"
            try:
                outcome = run_definition(
                    self._definition,
                    self._ctx,
                    interrupter,
                    grace_seconds=settings.cancel_grace_seconds,
                    max_result_bytes=settings.max_output_bytes,
                )
            except Exception as exc:  # an adapter's own failure: record it, do not lose the run
                log.exception("the runtime adapter of %s failed", self._run.ref)
                message = f"the worker could not run the task: {exc!r}"
                outcome = failed_outcome(self._ctx, ErrorCode.WORKER_ERROR, message)
            guard.returned()
            if guard.reason is StopReason.DRAIN and outcome.status is not RunStatus.COMPLETED:
                return self._hand_back()
            return self._record_patiently(self._settle(outcome, guard.reason))

    def _open(self) -> bool:
        """Emit the attempt's opening events. Redis may be briefly away: keep trying (the
        guard renews the lease meanwhile) rather than leave the claimed run to the sweeper."""
        run = self._run
        opening = (
            started_events(run.target)
            if run.first_start
            else [attempt_started_event(run.target, run.attempt)]
        )
        return patiently(
            lambda: self._rt.attempts.open_attempt(run, opening),
            self._rt.settings.finish_retry_seconds,
        )

    def _publish(self, events: Sequence[NewEvent]) -> None:
        if not self._rt.attempts.emit(self._run.ref, events):
            self._flag.set()  # the stream is closed: the run was cancelled

    def _settle(self, outcome: Outcome, reason: StopReason | None) -> Outcome:
        """Name why a stopped attempt failed, and refuse an output over the size limit."""
        if reason is StopReason.TIMEOUT and outcome.status is not RunStatus.COMPLETED:
            return self._timed_out(outcome.exit_code)
        limit = self._rt.settings.max_output_bytes
        if outcome.status is RunStatus.COMPLETED and json_size(outcome.output) > limit:
            message = (
                f"the task's output is larger than {limit} bytes as JSON (RUNS_MAX_OUTPUT_BYTES); "
                "store it elsewhere and return a reference"
            )
            return failed_outcome(self._ctx, ErrorCode.OUTPUT_TOO_LARGE, message, retryable=False)
        return outcome

    def _timed_out(self, exit_code: int | None) -> Outcome:
        message = f"the attempt timed out after {self._policy.timeout_seconds:g} s"
        return failed_outcome(
            self._ctx,
            ErrorCode.TIMEOUT,
            message,
            exit_code=exit_code if exit_code is not None else 1,
        )

    def _abandon(self, reason: StopReason) -> None:
        """The task ignored its stop: record what we know before its process is killed."""
        if reason is StopReason.TIMEOUT:
            self._record(self._timed_out(None))
        elif reason is StopReason.CANCELLED:
            self._rt.attempts.record_stop(self._run)
        elif reason is StopReason.DRAIN:
            self._hand_back()

    def _hand_back(self) -> str:
        """The worker is shutting down and the attempt did not end within its drain time: the
        run goes back to pending for another worker, this attempt not counted."""

        def hand_back() -> str:
            self._ctx.flush_events()
            if self._rt.attempts.hand_back(self._run):
                return "handed back: the worker is shutting down"
            return "dropped: the run was no longer this attempt's (cancelled or reclaimed)"

        return patiently(hand_back, self._rt.settings.finish_retry_seconds)

    def _record_patiently(self, outcome: Outcome) -> str:
        """Record the outcome, retrying while Redis or SQL is unreachable (the guard keeps the
        lease meanwhile). Past ``finish_retry_seconds`` the sweeper takes over."""

        def record() -> str:
            self._ctx.flush_events()  # the attempt's events come before its final ones
            return self._record(outcome)

        return patiently(record, self._rt.settings.finish_retry_seconds)

    def _record(self, outcome: Outcome) -> str:
        run = self._run
        retry = (
            outcome.status is RunStatus.FAILED
            and outcome.retryable
            and run.attempt < self._policy.max_attempts
        )
        if retry:
            if self._rt.attempts.retry(run, outcome, backoff_delay(self._rt.settings, run.attempt)):
                return f"retrying: attempt {run.attempt} failed"
        elif self._rt.attempts.finish(run, outcome):
            return outcome.status.value
        self._rt.attempts.record_stop(run)
        return "dropped: the run was no longer this attempt's (cancelled or reclaimed)"


def patiently(call: Callable[[], T], seconds: float) -> T:
    """``call()``, tried again with growing pauses for up to ``seconds`` while storage is
    unreachable (``TRANSIENT_ERRORS``); any other error is raised at once."""
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return call()
        except TRANSIENT_ERRORS:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("storage unreachable; trying again in %.1f s", delay, exc_info=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _end(runtime: WorkerRuntime, run: Run, outcome: Outcome) -> str:
    seconds = runtime.settings.finish_retry_seconds
    if patiently(lambda: runtime.attempts.finish(run, outcome), seconds):
        return f"failed: {outcome.error.code if outcome.error else ''}"
    return "dropped: cancelled"


def _failure(message: str, code: ErrorCode) -> Outcome:
    return Outcome(
        RunStatus.FAILED, error=RunError(message, code=code), exit_code=1, retryable=False
    )
