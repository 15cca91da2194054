"""What a test session leaves in the shared Redis: nothing of its own.

Other sessions may use the same Redis at the same time, so a session deletes only what it can
tell is its own: every name it makes (queues, worker names, counter keys) holds ``SESSION``
(``own`` makes them), and the event keys of runs name their project, a project of one of the
session's databases. ``clean`` deletes those keys and what kombu keeps elsewhere about such
queues and workers (members of shared binding tables, binding deadlines, unacknowledged
messages); ``pytest_sessionfinish`` in ``conftest`` calls it once every process has stopped.
Event receivers (``app.events.Receiver``) need a ``node_id`` from ``own`` for that.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Collection, Iterable
from pathlib import Path

import redis

SESSION = uuid.uuid4().hex[:10]

# The queues of the runs that tests write without sending them anywhere: a worker's sweeper
# (which sweeps its whole database) re-sends those still pending, so they too are the session's.
QUEUE = f"runs-{SESSION}"
SLOW_QUEUE = f"slow-{SESSION}"

DEADLINES = b"_kombu.binding_deadlines"
TABLE_PREFIXES = (b"_kombu.binding.", b"_kombu.binding_permanent.")
UNACKED, UNACKED_INDEX = b"unacked", b"unacked_index"


def own(prefix: str) -> str:
    """A new name of this session (a queue, a worker, a key) starting with ``prefix``."""
    return f"{prefix}-{SESSION}-{uuid.uuid4().hex[:8]}"


def own_project_id() -> str:
    """A project id for event keys written without a project in any database."""
    return f"{SESSION}-{uuid.uuid4()}"


def sqlite_project_ids(folder: Path) -> set[str]:
    """The ids of the projects in every SQLite database under ``folder``."""
    found: set[str] = set()
    for path in folder.rglob("*.db"):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                found.update(str(row[0]) for row in conn.execute("SELECT id FROM projects"))
        except sqlite3.Error:
            continue  # not a database of runs
    return found


def clean(client: redis.Redis, token: str, project_ids: Collection[str]) -> list[bytes]:
    """Delete the keys and entries of ``token``'s session; returns the keys deleted."""
    mark = token.encode()
    projects = {p.encode() for p in project_ids}
    doomed: list[bytes] = []
    tables: list[bytes] = []
    for key in client.scan_iter(count=1000):
        if mark in key or _project_of(key) in projects:
            doomed.append(key)
        elif key.startswith(TABLE_PREFIXES):
            tables.append(key)
    for chunk in _chunks(doomed, 500):
        client.delete(*chunk)
    # A killed worker stays a member of shared tables (celery.pidbox) under its own name.
    for table in tables:
        members = [m for m in client.smembers(table) if mark in m]
        if members:
            client.srem(table, *members)
    # A deadline of a table that is gone (deleted above, or emptied) is kombu's to drop anyway.
    for exchange in client.zrange(DEADLINES, 0, -1):
        if mark in exchange or not _has_table(client, exchange):
            client.zrem(DEADLINES, exchange)
    # Messages a killed worker had taken, which kombu would otherwise restore some day.
    for tag, message in client.hscan_iter(UNACKED):
        if mark in message:
            client.hdel(UNACKED, tag)
            client.zrem(UNACKED_INDEX, tag)
    return doomed


def _project_of(key: bytes) -> bytes | None:
    """The project of an event key, ``runs:{<project>/<run>}:events`` (or ``:meta``)."""
    if not key.startswith(b"runs:{"):
        return None
    return key[len(b"runs:{") :].split(b"/", 1)[0]


def _has_table(client: redis.Redis, exchange: bytes) -> bool:
    return bool(client.exists(*(prefix + exchange for prefix in TABLE_PREFIXES)))


def _chunks(items: list[bytes], size: int) -> Iterable[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
