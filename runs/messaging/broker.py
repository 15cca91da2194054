"""The Celery broker on Redis: kombu's transport, publishing through one client per channel.

kombu's Redis channel builds a new redis-py client for every message it publishes (a job, a
task event), and building one costs more than sending the message: in a worker's main process
with task events on, it was a fifth of all the CPU spent. This channel keeps one client, on
the same connection pool, for every command that does not need a client of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.objects import cached_property

# What Celery's ``broker_transport`` names for a ``redis://`` broker URL.
REDIS_TRANSPORT = "runs.messaging.broker:Transport"


class Channel(kombu_redis.Channel):
    @cached_property
    def _shared_client(self) -> Any:
        return self._create_client()  # type: ignore[no-untyped-call]

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client if client is not None else self._shared_client


class Transport(kombu_redis.Transport):
    Channel = Channel
