"""One attempt of a claimed run: resolve its definition, run it through an adapter under a
guard (lease, timeout, stop), then record the outcome: a retry, the terminal record, or (for a
run cancelled meanwhile) the time the work stopped. The jobs that claim runs are
``task_groups``' (a run alone, or runs that travel together)."""

from __future__ import annotations

import logging
from typing import Protocol

from runs.domain.clock import utcnow
from runs.domain.events import attempt_started_event, started_events
from runs.domain.runs import ErrorCode, Outcome, Run, RunError, RunStatus
from runs.observability.json_logs import bind_run_fields, run_log_fields
from runs.services.attempt_groups import Ending
from runs.services.creation import json_size
from workers.definitions.registry import TaskDefinition
from workers.execution.context import failed_outcome
from workers.execution.guard import StopReason
from workers.execution.policy import AttemptPolicy, backoff_delay, policy_for
from workers.execution.results import CANCELLED, DROPPED, HANDED_BACK, RETRYING, ended
from workers.execution.runner import AttemptRunner, Ran
from workers.execution.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def run_claimed(runtime: WorkerRuntime, run: Run, owner: str, closer: Closer) -> str | Closing:
    """Run the attempt of a run this worker claimed for ``owner``. The terminal record of an
    attempt that ended is left to ``closer``, and the attempt's opening events go out with its
    first events or its close (a retry is recorded at once)."""
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
    return Attempt(runtime, run, owner, definition, policy, closer).run()


class Closing(Protocol):
    """What a closer answers for an outcome it will record: the job's result for that run,
    once recorded."""

    result: str


class Closer(Protocol):
    def close(self, ending: Ending) -> Closing:
        """Record the terminal outcome of an attempt, soon, with others."""


class Attempt:
    """One attempt of a task run: its opening events, the code under the guard
    (``AttemptRunner``), then its outcome recorded (a retry, or the terminal record)."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        run: Run,
        owner: str,
        definition: TaskDefinition,
        policy: AttemptPolicy,
        closer: Closer,
    ) -> None:
        self._rt = runtime
        self._run = run
        self._owner = owner
        self._policy = policy
        self._closer = closer
        self._runner = AttemptRunner(
            runtime,
            run,
            definition,
            owner=owner,
            attempt=run.attempt,
            config=run.config,
            timeout_seconds=policy.timeout_seconds,
        )

    def run(self) -> str | Closing:
        lease = self._rt.settings.worker_lease_seconds
        return self._runner.run(
            renew=lambda: self._rt.attempts.renew(self._run, lease),
            abandon=self._abandon,
            opening=self._open,
            conclude=self._conclude,
        )

    def _open(self) -> bool:
        """The attempt's opening events: they go out with its first batch of events, or with
        its close when it ends first (the runner's ``defer_opening``)."""
        run = self._run
        opening = (
            started_events(run.target)
            if run.first_start
            else [attempt_started_event(run.target, run.attempt)]
        )
        self._runner.defer_opening(opening)
        return True

    def _conclude(self, ran: Ran) -> str | Closing:
        if ran.outcome is None:
            self._rt.attempts.record_stop(self._run)
            return f"{CANCELLED}: before it started"
        if ran.reason is StopReason.DRAIN and ran.outcome.status is not RunStatus.COMPLETED:
            return self._hand_back()
        outcome = self._settle(ran.outcome, ran.reason)
        if not self._retries(outcome):
            opening = self._runner.unsent_opening
            ending = Ending(self._run, outcome, self._owner, utcnow(), opening)
            return self._closer.close(ending)
        return self._record(outcome)

    def _settle(self, outcome: Outcome, reason: StopReason | None) -> Outcome:
        """Name why a stopped attempt failed, and refuse an output over the size limit."""
        if reason is StopReason.TIMEOUT and outcome.status is not RunStatus.COMPLETED:
            return self._runner.timed_out("the attempt", outcome.exit_code)
        limit = self._rt.settings.max_output_bytes
        if outcome.status is RunStatus.COMPLETED and json_size(outcome.output) > limit:
            message = (
                f"the task's output is larger than {limit} bytes as JSON (RUNS_MAX_OUTPUT_BYTES); "
                "store it elsewhere and return a reference"
            )
            ctx = self._runner.ctx
            return failed_outcome(ctx, ErrorCode.OUTPUT_TOO_LARGE, message, retryable=False)
        return outcome

    def _abandon(self, reason: StopReason) -> None:
        """The task ignored its stop: record what we know before its process is killed."""
        if reason is StopReason.TIMEOUT:
            self._record(self._runner.timed_out("the attempt"))
        elif reason is StopReason.CANCELLED:
            self._rt.attempts.record_stop(self._run)
        elif reason is StopReason.DRAIN:
            self._hand_back()

    def _hand_back(self) -> str:
        """The worker is shutting down and the attempt did not end within its drain time: the
        run goes back to pending for another worker, this attempt not counted."""
        self._runner.ensure_open()
        self._runner.flush()
        if self._rt.attempts.hand_back(self._run):
            return f"{HANDED_BACK}: the worker is shutting down"
        return f"{DROPPED}: the run was no longer this attempt's (cancelled or reclaimed)"

    def _record(self, outcome: Outcome) -> str:
        """Record the outcome: a retry, or the terminal record. Each call retries while Redis
        or SQL is unreachable (the guard keeps the lease meanwhile); past
        ``finish_retry_seconds`` the sweeper takes over."""
        run = self._run
        self._runner.ensure_open()
        ended_at = utcnow()  # what a retried write of this outcome finds, if it landed
        attempts = self._rt.attempts
        if self._retries(outcome):
            delay = backoff_delay(self._rt.settings, run.attempt)
            if attempts.retry(run, outcome, delay, ended_at=ended_at):
                return f"{RETRYING}: {ended(outcome).partition(': ')[2]}"
        elif attempts.finish(run, outcome, owner=self._owner, ended_at=ended_at):
            return ended(outcome)
        attempts.record_stop(run)
        return f"{DROPPED}: the run was no longer this attempt's (cancelled or reclaimed)"

    def _retries(self, outcome: Outcome) -> bool:
        return (
            outcome.status is RunStatus.FAILED
            and outcome.retryable
            and self._run.attempt < self._policy.max_attempts
        )


def _end(runtime: WorkerRuntime, run: Run, owner: str, outcome: Outcome) -> str:
    if runtime.attempts.finish(run, outcome, owner=owner):
        return ended(outcome)
    return f"{DROPPED}: cancelled"


def _failure(message: str, code: ErrorCode) -> Outcome:
    return Outcome(
        RunStatus.FAILED, error=RunError(message, code=code), exit_code=1, retryable=False
    )
