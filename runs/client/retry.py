"""When a client sends a request again, and after how long.

Connect failures, 429 and 5xx are retried with exponential backoff and jitter, honouring
``Retry-After``. A request that is not safe to repeat (``Call.idempotent`` false) is sent
again only when it surely did not reach the server: a failed connect, or a 429. Creates are
safe: the client always sends a ``public_id``, so a repeat answers ``duplicate: true``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

# The server did not act on the request: it was never sent, or refused before any work.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    initial_delay: float = 0.5
    max_delay: float = 10.0
    # The longest Retry-After the client waits for; a longer one ends the retries.
    max_retry_after: float = 60.0

    def after_failure(
        self, retry: int, error: httpx.TransportError, idempotent: bool
    ) -> float | None:
        """Seconds to wait before retry number ``retry`` (0-based), or None to give up."""
        if retry >= self.max_retries:
            return None
        if not idempotent and not isinstance(error, _NOT_SENT):
            return None
        return self.backoff(retry)

    def after_status(
        self, retry: int, status: int, retry_after: float | None, idempotent: bool
    ) -> float | None:
        if retry >= self.max_retries:
            return None
        if status != 429 and (status < 500 or not idempotent):
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        return self.backoff(retry)

    def backoff(self, retry: int) -> float:
        """Exponential, capped, with jitter: between half and all of the step."""
        step = min(self.initial_delay * 2.0**retry, self.max_delay)
        return step * (0.5 + random.random() / 2)
