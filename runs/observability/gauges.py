"""Gauges read from storage when scraped: runs per active status (SQL, cached a few seconds)
and the depth of each Celery queue (LLEN on a Redis broker, one round trip; a passive declare
per queue on RabbitMQ).

They describe the whole deployment, not one process: every API process answers the same
values (a dashboard takes the max over instances).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import redis
import sqlalchemy as sa
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runs.domain.runs import RunStatus
from runs.persistence.engine import autocommit
from runs.persistence.records import active_counts
from runs.settings import Settings

log = logging.getLogger(__name__)

# kombu's Redis transport keeps a queue's messages of priority p > 0 under "<queue>\x06\x16<p>".
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{p}" for p in _PRIORITY_STEPS)]


class StatusCounts:
    """``active_counts`` at most once per ``cache_seconds``, whoever asks."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = autocommit(engine)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._counts: dict[RunStatus, int] = {}

    def get(self) -> dict[RunStatus, int]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._cache_seconds:
                with self._engine.connect() as conn:
                    self._counts = active_counts(conn)
                self._read_at = now
            return dict(self._counts)


class QueueDepth(Protocol):
    def read(self, queues: Sequence[str]) -> list[int]: ...

    def close(self) -> None: ...


class RedisQueueDepth:
    """Jobs waiting in each queue of a Redis broker, every priority's list, one round trip."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)

    def read(self, queues: Sequence[str]) -> list[int]:
        pipe = self._client.pipeline(transaction=False)
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        lengths = pipe.execute()
        per_queue = len(_PRIORITY_STEPS) + 1
        return [sum(lengths[i * per_queue : (i + 1) * per_queue]) for i in range(len(queues))]

    def close(self) -> None:
        self._client.close()


class AmqpQueueDepth:
    """Ready messages in each queue of RabbitMQ (a passive declare: a queue nobody declared
    yet holds nothing)."""

    def __init__(self, url: str) -> None:
        self._url = url

    def read(self, queues: Sequence[str]) -> list[int]:
        from kombu.connection import Connection
        from kombu.exceptions import ChannelError

        depths: list[int] = []
        with Connection(self._url, connect_timeout=2) as connection:  # type: ignore[no-untyped-call]
            channel = connection.channel()
            for queue in queues:
                try:
                    depths.append(int(channel.queue_declare(queue, passive=True).message_count))
                except ChannelError:  # no such queue; the broker closed the channel
                    depths.append(0)
                    channel = connection.channel()
        return depths

    def close(self) -> None:
        pass


def queue_depth_for(settings: Settings) -> QueueDepth:
    broker_url = settings.effective_broker_url
    return RedisQueueDepth(broker_url) if settings.redis_broker else AmqpQueueDepth(broker_url)


class StorageGauges(Collector):
    """``runs_by_status`` and ``runs_queue_depth``; a store that cannot be reached leaves its
    gauge out of the scrape (and is logged) rather than failing the scrape."""

    def __init__(
        self, counts: StatusCounts, depth: QueueDepth | None, queues: Sequence[str]
    ) -> None:
        self._counts = counts
        self._depth = depth
        self._queues = list(queues)

    def describe(self) -> list[Metric]:
        return []  # registering must not read storage

    def collect(self) -> Iterator[Metric]:
        yield from self._by_status()
        yield from self._queue_depth()

    def _by_status(self) -> Iterator[Metric]:
        try:
            counts = self._counts.get()
        except Exception:
            log.warning("runs_by_status left out: the database is unreachable", exc_info=True)
            return
        family = GaugeMetricFamily(
            "runs_by_status", "Runs in each active status now.", labels=["status"]
        )
        for status, count in counts.items():
            family.add_metric([status.value], count)
        yield family

    def _queue_depth(self) -> Iterator[Metric]:
        if self._depth is None:
            return
        try:
            depths = self._depth.read(self._queues)
        except Exception:  # redis-py's or kombu's errors: the broker is unreachable
            log.warning("runs_queue_depth left out: the broker is unreachable", exc_info=True)
            return
        family = GaugeMetricFamily(
            "runs_queue_depth", "Jobs waiting in each Celery queue.", labels=["queue"]
        )
        for queue, depth in zip(self._queues, depths, strict=True):
            family.add_metric([queue], depth)
        yield family
