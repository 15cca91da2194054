"""The job: claim the run, resolve its definition, run one attempt through an adapter under a
guard (lease, timeout, stop), then record the outcome: a retry, the terminal record, or (for a
run cancelled meanwhile) the time the work stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from runs.domain.clock import utcnow
from runs.domain.events import NewEvent, attempt_started_event, started_events
from runs.domain.runs import ErrorCode, Outcome, Run, RunError, RunRef, RunStatus
from runs.observability.json_logs import bind_run_fields, run_log_fields
from runs.services.runs import json_size
from runs.services.transient import patiently
from workers.definitions.registry import TaskDefinition
from workers.execution.adapters import run_definition
from workers.execution.context import TaskContext, failed_outcome
from workers.execution.guard import AttemptGuard, Interrupter, StopReason
from workers.execution.policy import AttemptPolicy, backoff_delay, policy_for
from workers.execution.project_runs import project_runs
from workers.execution.runtime import WorkerRuntime
from workers.flower_events import CANCELLED, DROPPED, HANDED_BACK, RETRYING, SKIPPED, ended

log = logging.getLogger(__name__)


def execute(runtime: WorkerRuntime, ref: RunRef) -> str:
    """Execute one attempt of the run ``ref``; returns what happened, for the worker's log.

    Every call that changes the run is made on behalf of ``owner``, a token unique to this
    claim, and retried while storage is unreachable: a retry after a lost answer completes the
    same change (``runs.services.attempts``)."""
    owner = runtime.new_owner()
    run = runtime.attempts.claim(
        ref, owner=owner, lease_seconds=runtime.settings.worker_lease_seconds
    )
    if run is None:
        return f"{SKIPPED}: not pending"  # a duplicate message, or a run already running or ended
    bind_run_fields(**run_log_fields(run))  # until the job ends (workers/celery_app.py)
    if run.status is RunStatus.CANCELLED:  # claimed, then cancelled before the claim's answer
        runtime.attempts.record_stop(run)
        return f"{CANCELLED}: before it started"
    definition = runtime.registry.find(run.target)
    policy = policy_for(runtime.settings, definition, run)
    if definition is None:
        message = f"no definition for target {run.target!r} in this worker"
        return _end(runtime, run, owner, _failure(message, ErrorCode.UNKNOWN_TARGET))
    if policy.waited_too_long(run):
        message = f"the run waited more than {policy.queue_ttl_seconds:g} s for a worker"
        return _end(runtime, run, owner, _failure(message, ErrorCode.EXPIRED))
    return Attempt(runtime, run, owner, definition, policy).run()


class Attempt:
    def __init__(
        self,
        runtime: WorkerRuntime,
        run: Run,
        owner: str,
        definition: TaskDefinition,
        policy: AttemptPolicy,
    ) -> None:
        self._rt = runtime
        self._run = run
        self._owner = owner
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
                return f"{CANCELLED}: before it started"
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
        """Emit the attempt's opening events. Redis may be briefly away: the service keeps
        trying (the guard renews the lease meanwhile) rather than leave the claimed run to the
        sweeper."""
        run = self._run
        opening = (
            started_events(run.target)
            if run.first_start
            else [attempt_started_event(run.target, run.attempt)]
        )
        return self._rt.attempts.open_attempt(run, opening, owner=self._owner)

    def _publish(self, events: Sequence[NewEvent], batch: int) -> None:
        # The outbox sends a batch again under the same number when its answer was lost.
        appended = self._rt.attempts.emit(
            self._run.ref, events, producer=self._owner, sequence=str(batch)
        )
        if not appended:
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

    def _flush(self) -> None:
        """Send the attempt's events still waiting, retrying while Redis is unreachable."""
        patiently(self._ctx.flush_events, self._rt.settings.finish_retry_seconds)

    def _hand_back(self) -> str:
        """The worker is shutting down and the attempt did not end within its drain time: the
        run goes back to pending for another worker, this attempt not counted."""
        self._flush()
        if self._rt.attempts.hand_back(self._run):
            return f"{HANDED_BACK}: the worker is shutting down"
        return f"{DROPPED}: the run was no longer this attempt's (cancelled or reclaimed)"

    def _record_patiently(self, outcome: Outcome) -> str:
        """Record the outcome. Each call retries while Redis or SQL is unreachable (the guard
        keeps the lease meanwhile); past ``finish_retry_seconds`` the sweeper takes over."""
        self._flush()  # the attempt's events come before its final ones
        return self._record(outcome)

    def _record(self, outcome: Outcome) -> str:
        run = self._run
        ended_at = utcnow()  # what a retried write of this outcome finds, if it landed
        retry = (
            outcome.status is RunStatus.FAILED
            and outcome.retryable
            and run.attempt < self._policy.max_attempts
        )
        attempts = self._rt.attempts
        if retry:
            delay = backoff_delay(self._rt.settings, run.attempt)
            if attempts.retry(run, outcome, delay, ended_at=ended_at):
                return f"{RETRYING}: {ended(outcome).partition(': ')[2]}"
        elif attempts.finish(run, outcome, owner=self._owner, ended_at=ended_at):
            return ended(outcome)
        attempts.record_stop(run)
        return f"{DROPPED}: the run was no longer this attempt's (cancelled or reclaimed)"


def _end(runtime: WorkerRuntime, run: Run, owner: str, outcome: Outcome) -> str:
    if runtime.attempts.finish(run, outcome, owner=owner):
        return ended(outcome)
    return f"{DROPPED}: cancelled"


def _failure(message: str, code: ErrorCode) -> Outcome:
    return Outcome(
        RunStatus.FAILED, error=RunError(message, code=code), exit_code=1, retryable=False
    )
