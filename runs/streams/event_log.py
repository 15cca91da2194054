"""The event log of runs on Redis Streams.

One stream per run. Event ids are positive integers assigned atomically by a Lua script from a
per-run counter, and stored as stream ids ``0-<n>`` so the stream itself keeps them ordered.
Closing a run reserves the ids of its final events and refuses any later append, so the terminal
event is always last; the final events are published only after the terminal record committed.
Every call a worker may retry after losing its answer (open, append, close, publish) is safe to
repeat: the retry by the same caller changes nothing more and answers as the first call did.

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

import orjson
import redis

from runs.domain.events import NewEvent, RunEvent
from runs.domain.runs import RunRef
from runs.domain.text import storable
from runs.observability import metrics
from runs.persistence.json_text import loads_storable

# Every script starts with these helpers. KEYS[1] is the run's stream, KEYS[2] its meta hash:
# ``seq`` (the id counter), ``attempt`` (the owner token of the attempt that opened the stream),
# ``closed`` (who closed it: an owner token, or ``*`` for a cancel or the sweeper), ``final``
# (the first id the last close reserved), ``cancel``, and ``p:<producer>`` (the sequence and ids
# of a producer's last append, so that its retry appends nothing twice).
_PRELUDE = """
local stream, meta = KEYS[1], KEYS[2]

local function raise_floor(floor)
  floor = tonumber(floor)
  if tonumber(redis.call('HGET', meta, 'seq') or '0') < floor then
    redis.call('HSET', meta, 'seq', floor)
  end
end

local function top_id()
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #top == 0 then return 0 end
  return tonumber(string.match(top[1][1], '%-(%d+)$'))
end

-- An attempt closed the stream to finish, and its final events never came (it died, or
-- another ended the run): the ids it reserved are handed out again, so that none is skipped.
local function release_reserved()
  local closer = redis.call('HGET', meta, 'closed')
  if closer and closer ~= '*' then
    local final = tonumber(redis.call('HGET', meta, 'final') or '0')
    if final > top_id() then redis.call('HSET', meta, 'seq', final - 1) end
  end
end

-- The events of one call travel as three arguments whatever their number: how many, their
-- types and their payloads, each joined by newlines (compact JSON never holds a raw newline,
-- and event types are identifiers). One counter increment reserves all their ids.
local function add_events(created, count, types, payloads)
  count = tonumber(count)
  local last = redis.call('HINCRBY', meta, 'seq', count)
  local first = last - count + 1
  local t, p = 1, 1
  for n = first, last do
    local t_end = string.find(types, '\\n', t, true) or (#types + 1)
    local p_end = string.find(payloads, '\\n', p, true) or (#payloads + 1)
    redis.call('XADD', stream, '0-' .. n, 't', string.sub(types, t, t_end - 1),
      'p', string.sub(payloads, p, p_end - 1), 'c', created)
    t, p = t_end + 1, p_end + 1
  end
  return first, last
end

local function before(first)
  return redis.call('XRANGE', stream, '-', '0-' .. (first - 1))
end
"""

# ARGV: created, floor, producer, its sequence, count, types, payloads. Refused ({}) once the
# stream is closed. A producer's append whose sequence equals its last one's is a retry of
# that call (its answer was lost): it answers the same ids and appends nothing.
_APPEND = (
    _PRELUDE
    + """
if redis.call('HGET', meta, 'closed') then return {} end
local producer = ARGV[3]
if producer ~= '' then
  local prev = redis.call('HGET', meta, 'p:' .. producer)
  if prev then
    local s, f, l = string.match(prev, '^(.*) (%d+) (%d+)$')
    if s == ARGV[4] then return {tonumber(f), tonumber(l)} end
  end
end
raise_floor(ARGV[2])
local first, last = add_events(ARGV[1], ARGV[5], ARGV[6], ARGV[7])
if producer ~= '' then
  redis.call('HSET', meta, 'p:' .. producer, ARGV[4] .. ' ' .. first .. ' ' .. last)
end
return {first, last}
"""
)

# ARGV: created, floor, owner, count, types, payloads. An attempt opens the stream: unless
# the run was cancelled, it accepts appends again (an earlier attempt may have closed it and
# died before its record landed), and it is this owner's; then its opening events are
# appended, all in one round trip. Opened by this owner already (a retry): {0, 0}.
_OPEN = (
    _PRELUDE
    + """
if redis.call('HGET', meta, 'cancel') then return {} end
if redis.call('HGET', meta, 'attempt') == ARGV[3] then return {0, 0} end
release_reserved()
redis.call('HDEL', meta, 'closed')
redis.call('HSET', meta, 'attempt', ARGV[3])
raise_floor(ARGV[2])
local first, last = add_events(ARGV[1], ARGV[4], ARGV[5], ARGV[6])
return {first, last}
"""
)

# ARGV: count, cancel, floor, owner. Refuses appends from now on and reserves ``count`` ids
# for the final events; answers the first of them and the events before it. With an owner,
# on behalf of the attempt that finishes the run: refused (0) when the stream was closed by
# another (a cancel, the sweeper) or belongs to another attempt; closed by this owner
# already (a retry), it answers that close's reservation again.
_CLOSE = (
    _PRELUDE
    + """
local closer = redis.call('HGET', meta, 'closed')
if ARGV[4] ~= '' then
  if closer then
    if closer ~= ARGV[4] then return 0 end
    local final = tonumber(redis.call('HGET', meta, 'final'))
    return {final, before(final)}
  end
  local owner = redis.call('HGET', meta, 'attempt')
  if owner and owner ~= ARGV[4] then return 0 end
else
  release_reserved()
end
raise_floor(ARGV[3])
redis.call('HSET', meta, 'closed', ARGV[4] ~= '' and ARGV[4] or '*')
if ARGV[2] == '1' then redis.call('HSET', meta, 'cancel', '1') end
local last = redis.call('HINCRBY', meta, 'seq', tonumber(ARGV[1]))
local first = last - tonumber(ARGV[1]) + 1
redis.call('HSET', meta, 'final', first)
return {first, before(first)}
"""
)

# ARGV: ttl, then id, type, payload, created of each final event. Events already in the
# stream (a retried publish) are not added twice.
_PUBLISH = (
    _PRELUDE
    + """
local top = top_id()
for i = 2, #ARGV, 4 do
  if tonumber(ARGV[i]) > top then
    redis.call('XADD', stream, '0-' .. ARGV[i], 't', ARGV[i + 1], 'p', ARGV[i + 2],
      'c', ARGV[i + 3])
  end
end
redis.call('EXPIRE', stream, ARGV[1])
redis.call('EXPIRE', meta, ARGV[1])
return 1
"""
)


_SEEN_LIMIT = 10_000  # runs whose highest event id a process remembers


def stream_key(ref: RunRef) -> str:
    return f"runs:{{{ref.key}}}:events"


def _meta_key(ref: RunRef) -> str:
    return f"runs:{{{ref.key}}}:meta"


def _payload(payload: Any) -> bytes:
    """An event payload as stored: cleaned so that every read can return it. Most payloads
    need no cleaning, which the encoder itself finds out (a lone surrogate or an integer past
    64 bits cannot be encoded, a NUL shows as its escape; NaN and infinities become null)."""
    try:
        data = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
        if b"\\u0000" not in data:
            return data
    except orjson.JSONEncodeError:
        pass
    return json.dumps(storable(payload), separators=(",", ":"), allow_nan=False).encode()


def _now_ms() -> int:
    return int(time.time() * 1000)


def decode_entry(entry: Sequence[Any]) -> RunEvent:
    stream_id, fields = entry
    if isinstance(fields, list):  # raw Lua reply: flat [k, v, k, v]
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    raw_id = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return RunEvent(
        event_id=int(raw_id.split("-", 1)[1]),
        event_type=fields[b"t"].decode(),
        payload=loads_storable(fields[b"p"]),  # cleaned if an older worker wrote it
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
        self._open = client.register_script(_OPEN)
        self._seen: OrderedDict[str, int] = OrderedDict()

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int) -> RedisEventLog:
        return cls(redis.Redis.from_url(url), ttl_seconds=ttl_seconds)

    @property
    def client(self) -> redis.Redis:
        return self._client

    def append(
        self,
        ref: RunRef,
        events: Sequence[NewEvent],
        *,
        producer: str = "",
        sequence: str = "",
    ) -> list[int]:
        """Append events in one round trip; returns their ids, or [] once the run is closed.

        With a ``producer`` (an attempt's owner token, say) and its call's ``sequence``, a
        retry of the same call (same producer and sequence: its answer was lost) appends
        nothing again and answers the same ids."""
        if not events:
            return []
        reply = self._call(self._append, ref, [producer, sequence], events)
        return self._ids(ref, reply)

    def open(self, ref: RunRef, owner: str, events: Sequence[NewEvent]) -> bool:
        """Open the stream for the attempt ``owner`` and append its opening events, in one
        round trip. False when the run was cancelled (nothing is appended). Opened by this
        owner already (a retry), it appends nothing and answers True."""
        reply = self._call(self._open, ref, [owner], events)
        if reply and int(reply[0]) == 0:
            return True
        return bool(self._ids(ref, reply)) or not events

    def _call(self, script: Any, ref: RunRef, extra: list[Any], events: Sequence[NewEvent]) -> Any:
        types = "\n".join(event.event_type for event in events)
        if types.count("\n") != max(len(events) - 1, 0):
            raise ValueError("an event type holds a newline")
        args: list[Any] = [_now_ms(), self._seen.get(ref.key, 0), *extra, len(events), types]
        args.append(b"\n".join(_payload(event.payload) for event in events))
        return script(keys=[stream_key(ref), _meta_key(ref)], args=args)

    def _ids(self, ref: RunRef, reply: Any) -> list[int]:
        if not reply:
            return []
        first, last = int(reply[0]), int(reply[1])
        self._saw(ref.key, last)
        metrics.events_appended(last - first + 1)
        return list(range(first, last + 1))

    def close(self, ref: RunRef, count: int, *, cancel: bool = False) -> tuple[int, list[RunEvent]]:
        """Refuse further appends and reserve ``count`` ids for the final events.

        Returns the first reserved id and every event appended before it.
        """
        closed = self._closed(ref, count, cancel=cancel, owner="")
        assert closed is not None, "an unconditional close is never refused"
        return closed

    def close_attempt(
        self, ref: RunRef, owner: str, count: int, *, cancel: bool = False
    ) -> tuple[int, list[RunEvent]] | None:
        """``close`` on behalf of the attempt ``owner`` that finishes the run. ``None`` when
        the stream was closed by another (the run was cancelled, or ended by the sweeper) or
        belongs to a later attempt: the attempt lost the run. Closed by this owner already (a
        retry), it answers the same reservation."""
        return self._closed(ref, count, cancel=cancel, owner=owner)

    def _closed(
        self, ref: RunRef, count: int, *, cancel: bool, owner: str
    ) -> tuple[int, list[RunEvent]] | None:
        reply = self._close(
            keys=[stream_key(ref), _meta_key(ref)],
            args=[count, "1" if cancel else "0", self._seen.get(ref.key, 0), owner],
        )
        if not isinstance(reply, list):
            return None
        self._seen.pop(ref.key, None)
        first, entries = reply
        return int(first), [decode_entry(e) for e in entries]

    def _saw(self, key: str, event_id: int) -> None:
        self._seen[key] = event_id
        self._seen.move_to_end(key)
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)

    def publish(self, ref: RunRef, events: Sequence[RunEvent]) -> None:
        """Add the final events under their reserved ids and let the run's keys expire. Safe
        to repeat: an event already in the stream is not added again."""
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
        self._publish(keys=[stream_key(ref), _meta_key(ref)], args=args)
        metrics.events_appended(len(events))

    def expire(self, ref: RunRef) -> None:
        """Let the run's keys expire (a terminal run whose final events another call publishes)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.expire(stream_key(ref), self._ttl)
        pipe.expire(_meta_key(ref), self._ttl)
        pipe.execute()

    def forget(self, refs: Sequence[RunRef]) -> None:
        """Delete the keys of runs that are gone, in one round trip (a run's two keys share a
        hash slot, so each DEL also works on a Redis Cluster)."""
        if not refs:
            return
        pipe = self._client.pipeline(transaction=False)
        for ref in refs:
            self._seen.pop(ref.key, None)
            pipe.delete(stream_key(ref), _meta_key(ref))
        pipe.execute()

    def read(self, ref: RunRef, *, after: int, limit: int) -> list[RunEvent]:
        entries = self._client.xrange(stream_key(ref), min=f"0-{after + 1}", max="+", count=limit)
        return [decode_entry(e) for e in entries or ()]

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
