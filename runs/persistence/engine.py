"""Engine factory: one engine per process, created after fork, never at import time."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from runs.domain.text import loads


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
    }
    engine = sa.create_engine(url, **pooling)
    # Reads and single-statement writes (the hot path) use a pool of their own whose
    # connections stay in autocommit: switching a pooled connection in and out of it costs
    # driver calls on every checkout and check-in.
    sibling = sa.create_engine(url, isolation_level="AUTOCOMMIT", **pooling)
    _AUTOCOMMIT[engine] = sibling
    event.listen(engine, "engine_disposed", lambda _engine: sibling.dispose())
    return engine


_AUTOCOMMIT: weakref.WeakKeyDictionary[sa.Engine, sa.Engine] = weakref.WeakKeyDictionary()


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
