"""The errors that say storage is briefly unreachable, not that a request is wrong: a retry
loop waits these out and lets everything else through."""

from __future__ import annotations

import redis
import sqlalchemy.exc

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    # The database: a dropped or refused connection, a pool with no connection to give.
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    # Redis: a dropped or refused connection, a timeout, a server still loading.
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)
