"""Following a run's events as they are appended: blocking reads of its Redis stream on an
asyncio client, so that a follower costs the API no thread."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from runs.domain.events import RunEvent
from runs.domain.runs import RunRef
from runs.streams.connections import UNREACHABLE, AsyncEventClient, async_event_client
from runs.streams.event_log import decode_entry, stream_key

log = logging.getLogger(__name__)


class EventFollower:
    def __init__(self, client: AsyncEventClient) -> None:
        self._client = client

    @classmethod
    def from_url(
        cls, url: str, *, longest_block_seconds: float, followers: int, cluster: bool = False
    ) -> EventFollower:
        """Each follower holds one connection while it waits: the pool has one per follower
        the API may serve (its connection limit), not redis-py's default of 100. With
        ``cluster``, ``url`` is a node of a Redis Cluster: each read goes to its run's node."""
        client = async_event_client(
            url,
            cluster=cluster,
            # A blocking read lasts up to its block: the socket waits that long and more.
            socket_timeout=longest_block_seconds + 10,
            max_connections=followers,
        )
        return cls(client)

    async def after(self, ref: RunRef, after: int, *, block_seconds: float) -> list[RunEvent]:
        """Events with ids above ``after``, waiting up to ``block_seconds`` for the first.
        While Redis is unreachable: none, after that wait (the follower tries again)."""
        try:
            reply: Any = await self._client.xread(
                {stream_key(ref): f"0-{after}"}, count=500, block=max(1, int(block_seconds * 1000))
            )
        except UNREACHABLE:
            log.warning("Redis unreachable while following %s; trying again", ref)
            await asyncio.sleep(block_seconds)
            return []
        if not reply:
            return []
        # RESP2 answers [[key, entries]], RESP3 {key: [entries]}.
        entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
        return [decode_entry(entry) for entry in entries]

    async def since(self, ref: RunRef, after: int, *, limit: int = 500) -> list[RunEvent]:
        """Events with ids above ``after`` that are in the stream now (no wait), up to
        ``limit``. While Redis is unreachable: none."""
        try:
            entries = await self._client.xrange(stream_key(ref), min=f"0-{after + 1}", count=limit)
        except UNREACHABLE:
            log.warning("Redis unreachable while reading %s", ref)
            return []
        return [decode_entry(entry) for entry in entries or ()]

    async def last_id(self, ref: RunRef) -> int:
        """The id of the stream's newest event (0: none, or Redis unreachable)."""
        try:
            entries = await self._client.xrevrange(stream_key(ref), count=1)
        except UNREACHABLE:
            return 0
        return decode_entry(entries[0]).event_id if entries else 0

    async def close(self) -> None:
        await self._client.aclose()
