"""The event log of runs on Redis Streams.

One stream per run. Event ids are positive integers assigned atomically by a Lua script from a
per-run counter, and stored as stream ids ``0-<n>`` so the stream itself keeps them ordered.
Closing a run reserves the ids of its final events and refuses any later append, so the terminal
event is always last; the final events are published only after the terminal record committed.

Each process remembers the highest id it has seen per run and passes it as a floor, so a Redis
that restarts empty (no persistence) never hands out an id this process already used.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from runs.domain.events import NewEvent, RunEvent
from runs.domain.runs import RunRef
from runs.domain.text import storable

_FLOOR = """
local floor = tonumber(ARGV[FLOOR])
if tonumber(redis.call('HGET', KEYS[2], 'seq') or '0') < floor then
  redis.call('HSET', KEYS[2], 'seq', floor)
end
"""

_APPEND = (
    """
if redis.call('HGET', KEYS[2], 'closed') then return {} end
"""
    + _FLOOR.replace("FLOOR", "2")
    + """
local ids = {}
for i = 3, #ARGV, 2 do
  local n = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  redis.call('XADD', KEYS[1], '0-' .. n, 't', ARGV[i], 'p', ARGV[i + 1], 'c', ARGV[1])
  ids[#ids + 1] = n
end
return ids
"""
)

_CLOSE = (
    _FLOOR.replace("FLOOR", "3")
    + """
redis.call('HSET', KEYS[2], 'closed', '1')
if ARGV[2] == '1' then redis.call('HSET', KEYS[2], 'cancel', '1') end
local last = redis.call('HINCRBY', KEYS[2], 'seq', tonumber(ARGV[1]))
return {last - tonumber(ARGV[1]) + 1, redis.call('XRANGE', KEYS[1], '-', '+')}
"""
)

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


_SEEN_LIMIT = 10_000  # runs whose highest event id a process remembers


def _stream_key(ref: RunRef) -> str:
    return f"runs:{{{ref.key}}}:events"


def _meta_key(ref: RunRef) -> str:
    return f"runs:{{{ref.key}}}:meta"


def _payload(payload: Any) -> str:
    """An event payload as stored: cleaned so that every read can return it."""
    return json.dumps(storable(payload), separators=(",", ":"), allow_nan=False)


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
        self._seen: OrderedDict[str, int] = OrderedDict()

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int) -> RedisEventLog:
        return cls(redis.Redis.from_url(url), ttl_seconds=ttl_seconds)

    @property
    def client(self) -> redis.Redis:
        return self._client

    def append(self, ref: RunRef, events: Sequence[NewEvent]) -> list[int]:
        """Append events in one round trip; returns their ids, or [] once the run is closed."""
        if not events:
            return []
        args: list[Any] = [_now_ms(), self._seen.get(ref.key, 0)]
        for event in events:
            args.extend((event.event_type, _payload(event.payload)))
        ids = [int(i) for i in self._append(keys=[_stream_key(ref), _meta_key(ref)], args=args)]
        if ids:
            self._saw(ref.key, ids[-1])
        return ids

    def close(self, ref: RunRef, count: int, *, cancel: bool = False) -> tuple[int, list[RunEvent]]:
        """Refuse further appends and reserve ``count`` ids for the final events.

        Returns the first reserved id and every event appended so far.
        """
        first, entries = self._close(
            keys=[_stream_key(ref), _meta_key(ref)],
            args=[count, "1" if cancel else "0", self._seen.pop(ref.key, 0)],
        )
        return int(first), [_decode(e) for e in entries]

    def _saw(self, key: str, event_id: int) -> None:
        self._seen[key] = event_id
        self._seen.move_to_end(key)
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)

    def reopen(self, ref: RunRef) -> bool:
        """Accept appends again for a new attempt, unless the run was cancelled meanwhile."""
        return bool(self._reopen(keys=[_meta_key(ref)]))

    def publish(self, ref: RunRef, events: Sequence[RunEvent]) -> None:
        """Add the final events under their reserved ids and let the run's keys expire."""
        args: list[Any] = [self._ttl]
        for event in events:
            args.extend(
                (
                    event.event_id,
                    event.event_type,
                    _payload(event.payload),
                    int(event.created_at.timestamp() * 1000),
                )
            )
        self._publish(keys=[_stream_key(ref), _meta_key(ref)], args=args)

    def read(self, ref: RunRef, *, after: int, limit: int) -> list[RunEvent]:
        entries = self._client.xrange(_stream_key(ref), min=f"0-{after + 1}", max="+", count=limit)
        return [_decode(e) for e in entries or ()]

    def request_stop(self, ref: RunRef, node_id: str) -> None:
        """Ask the worker running one node of a run to stop (a race's losers, for example)."""
        self._client.hset(_meta_key(ref), f"cancel:{node_id}", "1")

    def cancel_requested(
        self, watched: Sequence[tuple[RunRef, str | None]]
    ) -> set[tuple[RunRef, str | None]]:
        """Which of these (run, node) pairs have been asked to stop, in one round trip."""
        if not watched:
            return set()
        pipe = self._client.pipeline(transaction=False)
        for ref, node_id in watched:
            fields = ["cancel"] if node_id is None else ["cancel", f"cancel:{node_id}"]
            pipe.hmget(_meta_key(ref), fields)
        replies = pipe.execute()
        return {key for key, flags in zip(watched, replies, strict=True) if any(flags)}

    def ping(self) -> bool:
        return bool(self._client.ping())
