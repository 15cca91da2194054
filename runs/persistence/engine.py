"""Engine factory: one engine per process, created after fork, never at import time.

Connections a database server dropped (it restarted, or a proxy closed them) are not handed
out: on checkout, a pooled connection whose socket the server has closed is replaced with a
new one, at the cost of one non-blocking ``poll`` (a ping would cost a round trip). A single
statement of the autocommit engine that meets a dropped connection while it runs is tried once
more on a new connection (the recipe of SQLAlchemy's FAQ, "How do I retry a statement
execution automatically?"): the hot path's writes are conditional, and their callers tell a
write of their own that landed before its answer was lost (``runs.services.attempts``).
"""

from __future__ import annotations

import logging
import select
import weakref
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from runs.persistence.json_text import dumps, loads

log = logging.getLogger(__name__)


def create_engine(database_url: str, *, pool_size: int = 5) -> sa.Engine:
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url)
    # No pre-ping: it costs a round trip per checkout on the hot path; a connection found dead
    # invalidates the pool, and connections are recycled before servers drop idle ones.
    pooling: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": pool_size * 2,
        "pool_recycle": 1800,
        "json_deserializer": loads,  # orjson, exact past 64 bits
        "json_serializer": dumps,  # orjson, the standard library past 64 bits
    }
    engine = sa.create_engine(url, **pooling)
    # Reads and single-statement writes (the hot path) use a pool of their own whose
    # connections stay in autocommit: switching a pooled connection in and out of it costs
    # driver calls on every checkout and check-in.
    sibling = sa.create_engine(url, isolation_level="AUTOCOMMIT", **pooling)
    for created in (engine, sibling):
        event.listen(created, "checkout", _refuse_closed_connection)
    event.listen(sibling, "do_execute", _execute_retrying_once)
    _AUTOCOMMIT[engine] = sibling
    event.listen(engine, "engine_disposed", lambda _engine: sibling.dispose())
    return engine


_AUTOCOMMIT: weakref.WeakKeyDictionary[sa.Engine, sa.Engine] = weakref.WeakKeyDictionary()


def _refuse_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Checkout: an idle connection has nothing to read unless its server closed it (it sends
    a termination notice, or the socket is at its end). The pool then takes a new one."""
    if server_closed(dbapi_connection):
        raise sa.exc.DisconnectionError("the database server closed this pooled connection")


def server_closed(dbapi_connection: Any) -> bool:
    """Whether an idle psycopg connection was closed by its server."""
    if getattr(dbapi_connection, "closed", False):
        return True
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # no socket any more
        return True


def _execute_retrying_once(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    """``cursor.execute``, and once more on a new connection when the connection dropped
    while the statement ran (the server restarted). Autocommit only: no transaction is lost."""
    try:
        cursor.execute(statement, parameters)
        return True
    except context.dialect.loaded_dbapi.Error as error:
        connection = context.root_connection
        if not context.dialect.is_disconnect(error, connection.connection.dbapi_connection, cursor):
            raise
        log.warning("the database connection dropped during a statement; trying it once more")
        connection.invalidate()
        context.cursor = cursor = connection.connection.cursor()
    cursor.execute(statement, parameters)
    return True


def autocommit(engine: sa.Engine) -> sa.Engine:
    """The engine's database without BEGIN/COMMIT: for reads and single-statement writes,
    which are atomic on their own and save two round trips each."""
    found = _AUTOCOMMIT.get(engine)
    return found if found is not None else engine.execution_options(isolation_level="AUTOCOMMIT")


def _create_sqlite_engine(url: sa.URL) -> sa.Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the API read while a worker writes; busy_timeout waits for the write lock.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine
