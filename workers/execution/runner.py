"""One attempt of a definition, as a task run and a workflow step both run it: the context the
task sees (its events sent in numbered batches, on behalf of the attempt's owner token), the
cancel monitor, the guard (lease heartbeat, timeout, stop), and the definition run by its
runtime adapter. What differs between the two (how a lease is renewed, what a stuck attempt
records, what happens once the code returned) the caller hands in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from runs.domain.events import NewEvent
from runs.domain.runs import ErrorCode, Lease, Outcome, Run
from runs.services.transient import patiently
from workers.definitions.registry import TaskDefinition
from workers.execution.adapters import run_definition
from workers.execution.context import TaskContext, failed_outcome
from workers.execution.guard import AttemptGuard, Interrupter, StopReason
from workers.execution.project_runs import project_runs
from workers.execution.runtime import WorkerRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ran:
    """How the code of an attempt ended: its outcome (None: it never started, the run was
    cancelled first) and why the guard stopped it, if it did."""

    outcome: Outcome | None
    reason: StopReason | None


class AttemptRunner:
    def __init__(
        self,
        runtime: WorkerRuntime,
        run: Run,
        definition: TaskDefinition,
        *,
        owner: str,
        attempt: int,
        config: Any,
        timeout_seconds: float,
        node_id: str | None = None,
        results: dict[str, Any] | None = None,
        start_child: Callable[..., str] | None = None,
    ) -> None:
        self._rt = runtime
        self._run = run
        self._definition = definition
        self._owner = owner
        self._node_id = node_id
        self.timeout_seconds = timeout_seconds
        self.flag = threading.Event()
        self._opening_due = False  # opening events deferred, not sent yet
        # The deferred opening events (and any sent after them) still unsent once the code
        # returned: whoever records the outcome sends them (``ensure_open``, or a group's close).
        self.unsent_opening: list[NewEvent] | None = None
        self.ctx = TaskContext(
            run_id=run.run_id,
            project_id=run.project_id,
            target=run.target,
            attempt=attempt,
            config=config,
            input=run.input,
            publish=self._publish,
            cancel_event=self.flag,
            results=results,
            start_child=start_child,
            max_log_bytes=runtime.settings.max_log_bytes,
            project_runs=lambda flag: project_runs(runtime, run, flag),
        )

    def run(
        self,
        *,
        renew: Callable[[], Lease],
        abandon: Callable[[StopReason], None],
        conclude: Callable[[Ran], T],
        opening: Callable[[], bool] | None = None,
    ) -> T:
        """Run the attempt under its guard and ``conclude`` it there (the lease is renewed
        until ``conclude`` returns). ``opening`` emits what comes before the code; False when
        the run was cancelled first (the code does not run)."""
        settings = self._rt.settings
        interrupter = Interrupter() if self._definition.command is None else None
        guard = AttemptGuard(
            flag=self.flag,
            renew=renew,
            lease_seconds=settings.worker_lease_seconds,
            timeout_seconds=self.timeout_seconds,
            grace_seconds=settings.cancel_grace_seconds,
            interrupter=interrupter,
            abandon=abandon,
        )
        with self._rt.monitor.watch(self._run.ref, self.flag, self._node_id), guard:
            if opening is not None and not opening():
                guard.returned()
                return conclude(Ran(None, guard.reason))
            outcome = self._run_code(interrupter)
            guard.returned()
            self._settle_events()  # the attempt's events come before its final ones
            return conclude(Ran(outcome, guard.reason))

    def defer_opening(self, events: Sequence[NewEvent]) -> None:
        """Open the run's stream with ``events`` together with the attempt's first batch of
        events (the outbox sends within a few milliseconds) instead of in a call of its own:
        a run that ends sooner leaves them in ``unsent_opening``, to go with its close."""
        self._opening_due = True
        self.ctx.send_later(events)

    def ensure_open(self) -> None:
        """Send the deferred opening still unsent (refused when the run was cancelled first:
        then what records the outcome finds the run no longer the attempt's)."""
        opening, self.unsent_opening = self.unsent_opening, None
        if opening is not None:
            self._rt.attempts.open_attempt(self._run, opening, owner=self._owner)
        elif self._opening_due:  # still in the outbox (the code has not returned): send it
            self.flush()

    def _settle_events(self) -> None:
        if self._opening_due:
            taken = self.ctx.take_unsent_events()
            if taken is not None:
                self._opening_due = False
                self.unsent_opening = taken
                return
        self.flush()

    def flush(self) -> None:
        """Send the attempt's events still waiting, retrying while Redis is unreachable."""
        patiently(self.ctx.flush_events, self._rt.settings.finish_retry_seconds)

    def timed_out(self, what: str, exit_code: int | None = None) -> Outcome:
        """The outcome of an attempt stopped by its timeout."""
        message = f"{what} timed out after {self.timeout_seconds:g} s"
        code = exit_code if exit_code is not None else 1
        return failed_outcome(self.ctx, ErrorCode.TIMEOUT, message, exit_code=code)

    def _run_code(self, interrupter: Interrupter | None) -> Outcome:
        settings = self._rt.settings
        try:
            return run_definition(
                self._definition,
                self.ctx,
                interrupter,
                grace_seconds=settings.cancel_grace_seconds,
                max_result_bytes=settings.max_output_bytes,
            )
        except Exception as exc:  # an adapter's own failure: record it, do not lose the run
            log.exception("the runtime adapter of %s failed", self._run.ref)
            message = f"the worker could not run the task: {exc!r}"
            return failed_outcome(self.ctx, ErrorCode.WORKER_ERROR, message)

    def _publish(self, events: Sequence[NewEvent], batch: int) -> None:
        if self._opening_due:  # the first batch opens the stream (``defer_opening``)
            opened = self._rt.attempts.open_attempt(self._run, events, owner=self._owner)
            self._opening_due = False
            if not opened:
                self.flag.set()  # the run was cancelled before it opened
            return
        # The outbox sends a batch again under the same number when its answer was lost.
        appended = self._rt.attempts.emit(
            self._run.ref, events, producer=self._owner, sequence=str(batch)
        )
        if not appended:
            self.flag.set()  # the stream is closed: the run was cancelled
