"""What a job returns: how the attempt it ran ended, as "<how>: <detail>". The worker's log
shows it, and Flower's task event for the job is chosen from it (``workers.flower_events``)."""

from __future__ import annotations

from runs.domain.runs import Outcome, RunStatus

# How an attempt ended; the detail is kept short (Celery cuts a result's repr at 1,024
# characters, and Flower reads the result from that repr).
MAX_DETAIL = 400
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
DROPPED = "dropped"  # the attempt lost its run (cancelled, or reclaimed) before it recorded
RETRYING = "retrying"
HANDED_BACK = "handed back"
SKIPPED = "skipped"  # a duplicate message, or a job with nothing to do
DEFERRED = "deferred"


def ended(outcome: Outcome) -> str:
    """The result of a job whose attempt recorded ``outcome`` as the run's end."""
    if outcome.status is RunStatus.COMPLETED:
        return COMPLETED
    error = outcome.error
    message = error.message[:MAX_DETAIL] if error else ""
    detail = f"{error.code}: {message}" if error and error.code else message
    return f"{outcome.status.value}: {detail}" if detail else outcome.status.value
