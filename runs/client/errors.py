"""What the SDK raises: one hierarchy under ``RunsClientError``.

``ApiError`` is an answer of the server other than success; it carries the HTTP status, the
problem (``application/problem+json``, parsed when it is one) and the request and response.
``TransportError`` is a request that got no answer (connect, read or write failure).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from pydantic import ValidationError

from runs.schemas.common import ProblemOut


class RunsClientError(Exception):
    """Anything the Runs SDK raises."""


class ConfigurationError(RunsClientError):
    """The client lacks what it needs (an API URL, a token or a project)."""


class TransportError(RunsClientError):
    """No answer: the connection failed or timed out (after the retries allowed)."""


class WaitTimeout(RunsClientError):
    """``wait`` gave up before the run ended."""

    def __init__(self, run_id: str, timeout: float) -> None:
        super().__init__(f"run {run_id} did not end within {timeout:g} s")
        self.run_id = run_id
        self.timeout = timeout


class ApiError(RunsClientError):
    """The server answered with an error status."""

    def __init__(self, response: httpx.Response, problem: ProblemOut | None) -> None:
        self.status = response.status_code
        self.problem = problem
        self.response = response
        self.request = response.request
        if problem is not None:
            message = f"{self.status} {problem.title}: {problem.detail}"
        else:
            message = f"{self.status} {response.reason_phrase}: {response.text[:500]}"
        super().__init__(message)


class InvalidRequest(ApiError):
    """400 or 422: the request was refused as it is; it is never retried."""


class Unauthorized(ApiError):
    """401 or 403: the token is missing, unknown, revoked or not allowed here."""


class NotFound(ApiError):
    """404: no such run, project or definition (for this token's project)."""


class Conflict(ApiError):
    """409: the run is not in a state that allows this (an approval nobody waits on)."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` is the server's hint in seconds, if it gave one."""

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.response.headers.get("Retry-After"))


class ServerError(ApiError):
    """5xx: the server failed; requests that are safe to repeat are retried first."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    429: RateLimited,
}


def error_for(response: httpx.Response) -> ApiError:
    """The error of a non-success answer (its body must have been read)."""
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else ApiError
    return kind(response, _problem(response))


def _problem(response: httpx.Response) -> ProblemOut | None:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        return ProblemOut.model_validate_json(response.content)
    except ValidationError:
        return None


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
