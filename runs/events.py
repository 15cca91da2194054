"""The event log of runs on Redis Streams.

One stream per run. Event ids are positive integers assigned atomically by a Lua script from a
per-run counter, and stored as stream ids ``0-<n>`` so the stream itself keeps them ordered.
Closing a run reserves the ids of its final events and refuses any later append, so the terminal
event is always last; the final events are published only after the terminal record committed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from runs.domain.events import NewEvent, RunEvent

_APPEND = """
if redis.call('HGET', KEYS[2], 'closed') then return {} end
local ids = {}
for i = 2, #ARGV, 2 do
  local n = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  redis.call('XADD', KEYS[1], '0-' .. n, 't', ARGV[i], 'p', ARGV[i + 1], 'c', ARGV[1])
  ids[#ids + 1] = n
end
return ids
"""

_CLOSE = """
redis.call('HSET', KEYS[2], 'closed', '1')
if ARGV[2] == '1' then redis.call('HSET', KEYS[2], 'cancel', '1') end
local last = redis.call('HINCRBY', KEYS[2], 'seq', tonumber(ARGV[1]))
return {last - tonumber(ARGV[1]) + 1, redis.call('XRANGE', KEYS[1], '-', '+')}
"""

_REOPEN = """
if redis.call('HGET', KEYS[1], 'cancel') then return 0 end
redis.call('HDEL', KEYS[1], 'closed')
return 1
"""

_PUBLISH = """
for i = 2, #ARGV, 4 do
  redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 't', ARGV[i + 1], 'p', ARGV[i + 2], 'c', ARGV[i + 3])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""


def _stream_key(run_id: str) -> str:
    return f"runs:{{{run_id}}}:events"


def _meta_key(run_id: str) -> str:
    return f"runs:{{{run_id}}}:meta"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode(entry: Sequence[Any]) -> RunEvent:
    stream_id, fields = entry
    if isinstance(fields, list):  # raw Lua reply: flat [k, v, k, v]
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    raw_id = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return RunEvent(
        event_id=int(raw_id.split("-", 1)[1]),
        event_type=fields[b"t"].decode(),
        payload=json.loads(fields[b"p"]),
        created_at=datetime.fromtimestamp(int(fields[b"c"]) / 1000, UTC),
    )


class RedisEventLog:
    """Append, close, publish and read the events of runs."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._append = client.register_script(_APPEND)
        self._close = client.register_script(_CLOSE)
        self._publish = client.register_script(_PUBLISH)
        self._reopen = client.register_script(_REOPEN)

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int) -> RedisEventLog:
        return cls(redis.Redis.from_url(url), ttl_seconds=ttl_seconds)

    @property
    def client(self) -> redis.Redis:
        return self._client

    def append(self, run_id: str, events: Sequence[NewEvent]) -> list[int]:
        """Append events in one round trip; returns their ids, or [] once the run is closed."""
        if not events:
            return []
        args: list[Any] = [_now_ms()]
        for event in events:
            args.extend((event.event_type, json.dumps(event.payload, separators=(",", ":"))))
        ids = self._append(keys=[_stream_key(run_id), _meta_key(run_id)], args=args)
        return [int(i) for i in ids]

    def close(self, run_id: str, count: int, *, cancel: bool = False) -> tuple[int, list[RunEvent]]:
        """Refuse further appends and reserve ``count`` ids for the final events.

        Returns the first reserved id and every event appended so far.
        """
        first, entries = self._close(
            keys=[_stream_key(run_id), _meta_key(run_id)], args=[count, "1" if cancel else "0"]
        )
        return int(first), [_decode(e) for e in entries]

    def reopen(self, run_id: str) -> bool:
        """Accept appends again for a new attempt, unless the run was cancelled meanwhile."""
        return bool(self._reopen(keys=[_meta_key(run_id)]))

    def publish(self, run_id: str, events: Sequence[RunEvent]) -> None:
        """Add the final events under their reserved ids and let the run's keys expire."""
        args: list[Any] = [self._ttl]
        for event in events:
            args.extend(
                (
                    event.event_id,
                    event.event_type,
                    json.dumps(event.payload, separators=(",", ":")),
                    int(event.created_at.timestamp() * 1000),
                )
            )
        self._publish(keys=[_stream_key(run_id), _meta_key(run_id)], args=args)

    def read(self, run_id: str, *, after: int, limit: int) -> list[RunEvent]:
        entries = self._client.xrange(
            _stream_key(run_id), min=f"0-{after + 1}", max="+", count=limit
        )
        return [_decode(e) for e in entries or ()]

    def request_stop(self, run_id: str, node_id: str) -> None:
        """Ask the worker running one node of a run to stop (a race's losers, for example)."""
        self._client.hset(_meta_key(run_id), f"cancel:{node_id}", "1")

    def cancel_requested(
        self, watched: Sequence[tuple[str, str | None]]
    ) -> set[tuple[str, str | None]]:
        """Which of these (run, node) pairs have been asked to stop, in one round trip."""
        if not watched:
            return set()
        pipe = self._client.pipeline(transaction=False)
        for run_id, node_id in watched:
            fields = ["cancel"] if node_id is None else ["cancel", f"cancel:{node_id}"]
            pipe.hmget(_meta_key(run_id), fields)
        replies = pipe.execute()
        return {key for key, flags in zip(watched, replies, strict=True) if any(flags)}

    def ping(self) -> bool:
        return bool(self._client.ping())
