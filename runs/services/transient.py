"""The errors that say storage is briefly unreachable, not that a request is wrong, and the
retry loop that waits them out and lets everything else through.

A call retried after one of these may already have taken effect on the server (its answer was
lost): every state-changing call of the worker is written so that its retry by the same
caller completes the same change (see ``runs.services.attempts`` and ``runs.services.workflows``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
import sqlalchemy.exc

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    # The database: a dropped or refused connection, a pool with no connection to give.
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    # Redis: a dropped or refused connection, a timeout, a server still loading.
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    # A Redis Cluster: a slot without its node (until a replica takes over), a slot being
    # moved, no node answering (``runs.streams.connections.UNREACHABLE`` says the same).
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterUnreachableError,
)


def patiently(call: Callable[[], T], seconds: float) -> T:
    """``call()``, tried again with growing pauses for up to ``seconds`` while storage is
    unreachable (``TRANSIENT_ERRORS``); any other error is raised at once. With ``seconds``
    0 it is ``call()``."""
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return call()
        except TRANSIENT_ERRORS as error:
            if time.monotonic() + delay > deadline:
                raise
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.warning("storage unreachable (%s); trying again in %.1f s", reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
