"""The error vocabulary of the domain. Each error says what went wrong and how to fix it.

The API maps each class to one HTTP status in a single table (``runs.api.errors``).
"""

from __future__ import annotations


class RunsError(Exception):
    """Base class of every error the service raises on purpose."""

    title = "Request failed"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidRequest(RunsError):
    """The request is malformed or inconsistent: fix the named field and send it again."""

    title = "Invalid request"


class Unauthenticated(RunsError):
    """No valid token: send ``Authorization: Bearer <token>`` with a token that is not revoked."""

    title = "Unauthenticated"


class NotFound(RunsError):
    """The run, project or schedule does not exist, or belongs to another project."""

    title = "Not found"


class UnknownTarget(RunsError):
    """No worker has registered the target: check the id, or start a worker that defines it."""

    title = "Unknown target"


class Conflict(RunsError):
    """The request conflicts with the current state (for example a run id taken elsewhere)."""

    title = "Conflict"


class PayloadTooLarge(RunsError):
    """The body, input or config is larger than the server accepts: send less data."""

    title = "Payload too large"


class Unsupported(RunsError):
    """The request is well-formed but asks for something this server does not do."""

    title = "Unsupported"
