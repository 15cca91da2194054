"""The event vocabulary of runs (AG-UI style upper snake case) and the event record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runs.domain.runs import RunRef

RUN_STARTED = "RUN_STARTED"
RUN_FINISHED = "RUN_FINISHED"
RUN_ERROR = "RUN_ERROR"
STEP_STARTED = "STEP_STARTED"
STEP_FINISHED = "STEP_FINISHED"
RUN_LOG_CAPTURED = "RUN_LOG_CAPTURED"

# Event ids reach the official client as JavaScript numbers: they stay safe integers.
MAX_EVENT_ID = 2**53 - 1

LIFECYCLE_EVENT_TYPES = frozenset(
    {RUN_STARTED, RUN_FINISHED, RUN_ERROR, STEP_STARTED, STEP_FINISHED, RUN_LOG_CAPTURED}
)


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run. ``event_id`` is a positive integer, strictly increasing per run."""

    event_id: int
    event_type: str
    payload: Any
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended; the event log assigns its id."""

    event_type: str
    payload: Any


def started_events(step_name: str) -> list[NewEvent]:
    return [
        NewEvent(RUN_STARTED, {"type": RUN_STARTED, "status": "running"}),
        NewEvent(STEP_STARTED, {"type": STEP_STARTED, "stepName": step_name, "status": "running"}),
    ]


def log_event(line: str) -> NewEvent:
    return NewEvent(RUN_LOG_CAPTURED, {"type": RUN_LOG_CAPTURED, "logs": line})


def step_finished_event(step_name: str, status: str) -> NewEvent:
    return NewEvent(STEP_FINISHED, {"type": STEP_FINISHED, "stepName": step_name, "status": status})


def attempt_started_event(step_name: str, attempt: int) -> NewEvent:
    """A task run's later attempt starts (the first one opens with ``started_events``)."""
    payload = {"type": STEP_STARTED, "stepName": step_name, "status": "running", "attempt": attempt}
    return NewEvent(STEP_STARTED, payload)


def attempt_failed_event(step_name: str, attempt: int, message: str, *, retrying: bool) -> NewEvent:
    """An attempt failed; ``retrying`` says another one follows."""
    payload = {
        "type": STEP_FINISHED,
        "stepName": step_name,
        "status": "failed",
        "attempt": attempt,
        "retrying": retrying,
        "message": message,
    }
    return NewEvent(STEP_FINISHED, payload)


def attempt_handed_back_event(step_name: str, attempt: int) -> NewEvent:
    """An attempt stopped unfinished because its worker shut down; it does not count, and
    another worker runs the run again under the same attempt number."""
    payload = {
        "type": STEP_FINISHED,
        "stepName": step_name,
        "status": "handed_back",
        "attempt": attempt,
        "message": "the worker shut down before the attempt ended; another worker takes the run",
    }
    return NewEvent(STEP_FINISHED, payload)


def numbered(events: Sequence[NewEvent], first: int, now: datetime) -> list[RunEvent]:
    """Give ``events`` the ids reserved for them, starting at ``first``, and ``now`` to the
    millisecond, the precision the run's Redis stream keeps: its live stream and /events, read
    from SQL, then show the same time."""
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return [
        RunEvent(event_id=first + i, event_type=e.event_type, payload=e.payload, created_at=now)
        for i, e in enumerate(events)
    ]


def terminal_event(status: str, message: str | None = None) -> NewEvent:
    """``RUN_FINISHED`` for a completed run, else exactly one ``RUN_ERROR``."""
    if status == "completed":
        return NewEvent(RUN_FINISHED, {"type": RUN_FINISHED, "status": status})
    return NewEvent(RUN_ERROR, {"type": RUN_ERROR, "status": status, "message": message or status})


def step_event(event_type: str, node_id: str, status: str, attempt: int, **extra: Any) -> NewEvent:
    payload = {"type": event_type, "stepName": node_id, "status": status, "attempt": attempt}
    return NewEvent(event_type, {**payload, **extra})


# One run's close among many (``EventLog.close_attempts``): the run, the owner token of the
# attempt that finishes it, how many ids to reserve for its final events, and the opening events
# of an attempt that has not opened the run's stream yet (else None).
Closing = tuple[RunRef, str, int, Sequence[NewEvent] | None]
