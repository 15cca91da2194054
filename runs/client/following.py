"""What following a run's stream needs in both clients: when to reconnect, and the deadline
of a ``wait``."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from runs.client.errors import (
    ApiError,
    RunsClientError,
    TransportError,
    WaitTimeout,
    retry_after_seconds,
)
from runs.client.retry import RetryPolicy
from runs.client.sse import Frame
from runs.schemas.runs import RunEventOut

# The stream is quiet between heartbeats (15 s by default): a read waits longer than that.
STREAM_READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class Deadline:
    run_id: str
    seconds: float
    at: float

    @classmethod
    def after(cls, run_id: str, seconds: float | None) -> Deadline | None:
        return None if seconds is None else cls(run_id, seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        if self.remaining() <= 0:
            raise WaitTimeout(self.run_id, self.seconds)


def read_timeout(deadline: Deadline | None) -> float:
    if deadline is None:
        return STREAM_READ_TIMEOUT
    return max(0.05, min(STREAM_READ_TIMEOUT, deadline.remaining()))


def stream_headers(last: int) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if last:
        headers["Last-Event-ID"] = str(last)
    return headers


def event_of(frame: Frame) -> RunEventOut:
    return RunEventOut.model_validate_json(frame.data)


def reconnect_delay(
    policy: RetryPolicy, retry: int, error: Exception, deadline: Deadline | None
) -> float:
    """Seconds before the stream reconnects after ``error``; raises what the caller should
    see when it may not (``WaitTimeout`` once the deadline has passed)."""
    if deadline is not None:
        deadline.check()
    if isinstance(error, ApiError):
        delay = policy.after_status(
            retry,
            error.status,
            retry_after_seconds(error.response.headers.get("Retry-After")),
            True,
        )
        if delay is None:
            raise error
    else:
        assert isinstance(error, httpx.TransportError)
        delay = policy.after_failure(retry, error, True)
        if delay is None:
            raise TransportError(f"the run's stream failed: {error!r}") from error
    if deadline is not None:
        delay = min(delay, max(0.0, deadline.remaining()))
    return delay


def fallback_to_polling(error: RunsClientError) -> bool:
    """Whether ``wait`` should poll after its stream failed with ``error``."""
    if isinstance(error, ApiError):
        return error.status >= 500 or error.status in (404, 405)
    return isinstance(error, TransportError)
