"""The Redis clients of the run event log: one Redis, or a Redis Cluster (``RUNS_REDIS_CLUSTER``).

Every client of the event log, the cancel flags and the followers is built here. On a cluster
the keys of one run share a hash slot (``runs:{<project>/<run>}:...``), so each Lua script and
each command on one run goes to one node; a pipeline over many runs is split by redis-py's
cluster pipeline into one batch per node, and ``SCRIPT LOAD`` goes to every primary. Celery's
broker is never a cluster (kombu's Redis transport cannot use one): it stays a single Redis.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions
from redis.cluster import RedisCluster
from redis.commands.core import Script

EventClient = redis.Redis | RedisCluster
AsyncEventClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

# What says the event log's Redis is out of reach for now, not that a call is wrong: a dropped
# connection, a timeout, a cluster that lost a slot's node (until a replica takes over), a slot
# in the middle of a move, a cluster of which no node answers.
UNREACHABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterUnreachableError,
)


def event_client(url: str, *, cluster: bool) -> EventClient:
    """The client of the event log of a process (API, worker, sweeper, scheduler). ``url``
    names the Redis, or on a cluster any of its nodes (the client finds the others)."""
    if not cluster:
        return redis.Redis.from_url(url)
    return cast(RedisCluster, _ClusterOnFirstUse(url))


def async_event_client(url: str, *, cluster: bool, **options: Any) -> AsyncEventClient:
    """An asyncio client (the API's followers); ``options`` as redis-py's ``from_url`` takes
    them (on a cluster, ``max_connections`` holds per node). Both connect at first use."""
    if not cluster:
        return redis.asyncio.Redis.from_url(url, **options)
    return redis.asyncio.cluster.RedisCluster.from_url(url, **options)


class _ClusterOnFirstUse:
    """A ``RedisCluster`` that learns the cluster's nodes at its first command, not when it is
    built (redis-py's does at once): a process starts while the cluster is out of reach, as it
    does beside a single Redis, and its calls fail with a transient error until it is back."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def _cluster(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = RedisCluster.from_url(self._url)
                client = self._client
        return client

    def register_script(self, script: str) -> Script:
        # Its SHA1 is taken of the UTF-8 bytes here (as redis-py's default encoder would), with
        # no connection; its calls go through this client.
        return Script(cast(RedisCluster, self), script.encode())

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cluster(), name)
