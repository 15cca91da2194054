"""What a task function receives: its config and input, a logger, events, artifacts, cancel."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from runs.domain.events import LIFECYCLE_EVENT_TYPES, NewEvent, log_event
from runs.domain.runs import Outcome, RunError, RunStatus
from runs.domain.text import clean_text
from workers.definitions.errors import RunCancelled
from workers.execution.outbox import EventOutbox

if TYPE_CHECKING:
    from workers.execution.project_runs import ProjectRuns

CUSTOM_EVENT_TYPE = re.compile(r"^[A-Z][A-Z0-9_]{0,99}$")


TRUNCATED_MARKER = (
    "[runs] log truncated: this run wrote more than its log limit (RUNS_MAX_LOG_BYTES)"
)


class _CaptureHandler(logging.Handler):
    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__()
        self._sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self._sink(self.format(record))


class TaskContext:
    """The run as its task sees it. ``emit`` and log lines stream out while the task runs:
    ``publish(events, number)`` sends a numbered batch of them (``workers.execution.outbox``)."""

    def __init__(
        self,
        *,
        run_id: str,
        project_id: str,
        target: str,
        attempt: int,
        config: Any,
        input: Any,
        publish: Callable[[Sequence[NewEvent], int], None],
        cancel_event: threading.Event | None = None,
        results: dict[str, Any] | None = None,
        start_child: Callable[..., str] | None = None,
        max_log_bytes: int | None = None,
        project_runs: Callable[[threading.Event], ProjectRuns] | None = None,
    ) -> None:
        self.run_id = run_id
        self.project_id = project_id
        self.target = target
        self.attempt = attempt
        self.config = config if config is not None else {}
        self.input = input
        self._outbox = EventOutbox(publish)
        self.results = results if results is not None else {}  # earlier workflow steps' outputs
        self._start_child = start_child
        self._project_runs = project_runs
        self._runs: ProjectRuns | None = None
        self._cancel = cancel_event or threading.Event()
        self._lines: list[str] = []
        self._log_room = max_log_bytes
        self._log_lock = threading.Lock()
        self.artifacts: list[dict[str, Any]] = []
        # An unmanaged logger: not kept in logging's registry after the run. Its level is set
        # by the constructor: setLevel would clear the cache of every logger of the process.
        self.logger = logging.Logger(f"runs.task.{target}", logging.DEBUG)
        self.logger.addHandler(_CaptureHandler(self._capture))

    # -- logs and events ------------------------------------------------------------------

    def _capture(self, line: str) -> None:
        line = clean_text(line)  # a lone surrogate or NUL would make the logs unstorable
        with self._log_lock:  # a command's stdout and stderr arrive from two threads
            if self._log_room is not None:
                size = len(line.encode("utf-8")) + 1
                if self._log_room < size:
                    if self._log_room >= 0:
                        line = TRUNCATED_MARKER
                        self._log_room = -1
                    else:
                        return
                else:
                    self._log_room -= size
            self._lines.append(line)
            self._outbox.put([log_event(line)])  # under the lock: lines keep their order

    def log_line(self, line: str) -> None:
        """Add one line to the run's logs as it is (a command's output, for example)."""
        self._capture(line)

    @property
    def logs(self) -> str | None:
        return "\n".join(self._lines) if self._lines else None

    def emit(self, event_type: str, payload: Any = None) -> None:
        """Append a custom event (upper snake case, not one of the lifecycle types)."""
        if not CUSTOM_EVENT_TYPE.match(event_type) or event_type in LIFECYCLE_EVENT_TYPES:
            raise ValueError(
                f"custom event type {event_type!r} must be UPPER_SNAKE_CASE and not a "
                "lifecycle type such as RUN_STARTED"
            )
        body = (
            {"type": event_type, **payload}
            if isinstance(payload, dict)
            else {
                "type": event_type,
                "value": payload,
            }
        )
        self._outbox.put([NewEvent(event_type, body)])

    def flush_events(self) -> None:
        """Send the events still waiting in the outbox (before the outcome is recorded)."""
        self._outbox.flush()

    def send_later(self, events: Sequence[NewEvent]) -> None:
        """Queue events of the attempt itself (its opening ones) in the outbox."""
        self._outbox.put(events)

    def take_unsent_events(self) -> list[NewEvent] | None:
        """The events put so far when none has been sent yet (the caller sends them); None
        once some were (``flush_events`` sends the rest)."""
        return self._outbox.take_unsent()

    def add_artifact(
        self,
        name: str,
        *,
        uri: str | None = None,
        content_type: str | None = None,
        size: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Record an artifact of the run (a name and where it lives); stored on the run."""
        artifact: dict[str, Any] = {"name": name}
        for key, value in (
            ("uri", uri),
            ("content_type", content_type),
            ("size", size),
            ("metadata", metadata),
        ):
            if value is not None:
                artifact[key] = value
        self.artifacts.append(artifact)

    @property
    def runs(self) -> ProjectRuns:
        """The run's project, with the SDK's methods: start other runs and wait on them."""
        if self._runs is None:
            if self._project_runs is None:
                raise RuntimeError("this context cannot start runs")
            self._runs = self._project_runs(self._cancel)
        return self._runs

    def start_child(
        self, target: str, config: dict[str, Any] | None = None, *, name: str | None = None
    ) -> str:
        """Start a task run as a child of this run (``parent_run_id`` set); returns its id."""
        if self._start_child is None:
            raise RuntimeError("this context cannot start child runs")
        return self._start_child(target, config, name)

    # -- cancellation ---------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            raise RunCancelled(f"run {self.run_id} was cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns True early when the run is cancelled."""
        return self._cancel.wait(seconds)


def failed_outcome(
    ctx: TaskContext,
    code: str,  # an ErrorCode, or a task's own
    message: str,
    detail: Any = None,
    *,
    retryable: bool = True,
    exit_code: int = 1,
) -> Outcome:
    """A failed attempt's outcome, keeping what the task logged and recorded so far."""
    return Outcome(
        RunStatus.FAILED,
        error=RunError(message, code=code, detail=detail),
        logs=ctx.logs,
        artifacts=ctx.artifacts,
        exit_code=exit_code,
        retryable=retryable,
    )
