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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from runs.domain.events import Closing, NewEvent, RunEvent
from runs.domain.runs import RunRef
from runs.domain.text import storable
from runs.observability import metrics
from runs.persistence.json_text import loads_storable
from runs.streams import scripts
from runs.streams.connections import EventClient, event_client

_SEEN_LIMIT = 10_000  # runs whose highest event id a process remembers


def stream_key(ref: RunRef) -> str:
    return f"runs:{{{ref.key}}}:events"


def _meta_key(ref: RunRef) -> str:
    return f"runs:{{{ref.key}}}:meta"


def _keys(ref: RunRef) -> list[str]:
    return [stream_key(ref), _meta_key(ref)]


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

    def __init__(self, client: EventClient, *, ttl_seconds: int) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._append = client.register_script(scripts.APPEND)
        self._close = client.register_script(scripts.CLOSE)
        self._publish = client.register_script(scripts.PUBLISH)
        self._open = client.register_script(scripts.OPEN)
        self._seen: OrderedDict[str, int] = OrderedDict()

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int, cluster: bool = False) -> RedisEventLog:
        """On the Redis of ``url``, or with ``cluster`` on the Redis Cluster it is a node of."""
        return cls(event_client(url, cluster=cluster), ttl_seconds=ttl_seconds)

    @property
    def client(self) -> EventClient:
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
        return script(keys=_keys(ref), args=self._event_args(ref, extra, events))

    def _event_args(self, ref: RunRef, extra: list[Any], events: Sequence[NewEvent]) -> list[Any]:
        types = "\n".join(event.event_type for event in events)
        if types.count("\n") != max(len(events) - 1, 0):
            raise ValueError("an event type holds a newline")
        args: list[Any] = [_now_ms(), self._seen.get(ref.key, 0), *extra, len(events), types]
        args.append(b"\n".join(_payload(event.payload) for event in events))
        return args

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
        reply = self._close(keys=_keys(ref), args=self._close_args(ref, count, cancel, owner))
        return self._reservation(ref, reply)

    def _close_args(self, ref: RunRef, count: int, cancel: bool, owner: str) -> list[Any]:
        return [count, "1" if cancel else "0", self._seen.get(ref.key, 0), owner]

    def _reservation(self, ref: RunRef, reply: Any) -> tuple[int, list[RunEvent]] | None:
        if not isinstance(reply, list):
            return None
        self._seen.pop(ref.key, None)
        first, entries = reply
        return int(first), [decode_entry(e) for e in entries]

    # -- runs that travel together: one round trip for many ------------------------------

    def close_attempts(
        self, closings: Sequence[Closing]
    ) -> list[tuple[int, list[RunEvent]] | None]:
        """``close_attempt`` for many runs in one round trip. An attempt that has not opened
        its run's stream yet (a run that ended within a few milliseconds) passes its opening
        events: the stream is opened with them first, in the same round trip. Each answer is
        the one ``close_attempt`` gives (a repeat answers the same reservations)."""

        def build(pipe: Any) -> None:
            for ref, owner, count, opening in closings:
                if opening is not None:
                    args = self._event_args(ref, [owner], opening)
                    pipe.evalsha(self._open.sha, 2, *_keys(ref), *args)
                args = self._close_args(ref, count, False, owner)
                pipe.evalsha(self._close.sha, 2, *_keys(ref), *args)

        replies = iter(self._pipelined(build))
        answers: list[tuple[int, list[RunEvent]] | None] = []
        for ref, _, _, opening in closings:
            if opening is not None:
                opened = next(replies)
                if opened and int(opened[0]) != 0:
                    self._ids(ref, opened)
            answers.append(self._reservation(ref, next(replies)))
        return answers

    def publish_many(self, items: Sequence[tuple[RunRef, Sequence[RunEvent]]]) -> None:
        """``publish`` for many runs in one round trip (safe to repeat, as ``publish`` is)."""

        def build(pipe: Any) -> None:
            for ref, events in items:
                pipe.evalsha(self._publish.sha, 2, *_keys(ref), *self._publish_args(events))

        self._pipelined(build)
        metrics.events_appended(sum(len(events) for _, events in items))

    def _pipelined(self, build: Callable[[Any], None]) -> list[Any]:
        """Run the calls ``build`` queues in one round trip. The scripts are loaded when Redis
        has lost them (a restart), then every call is made again: each is safe to repeat."""
        for tries in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            build(pipe)
            try:
                return list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if tries == 2:
                    raise
                for script in (self._open, self._close, self._publish, self._append):
                    self._client.script_load(script.script)
        raise AssertionError("unreachable")

    def _saw(self, key: str, event_id: int) -> None:
        self._seen[key] = event_id
        self._seen.move_to_end(key)
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)

    def publish(self, ref: RunRef, events: Sequence[RunEvent]) -> None:
        """Add the final events under their reserved ids and let the run's keys expire. Safe
        to repeat: an event already in the stream is not added again."""
        self._publish(keys=_keys(ref), args=self._publish_args(events))
        metrics.events_appended(len(events))

    def _publish_args(self, events: Sequence[RunEvent]) -> list[Any]:
        args: list[Any] = [self._ttl]
        for event in events:
            created = int(event.created_at.timestamp() * 1000)
            args.extend((event.event_id, event.event_type, _payload(event.payload), created))
        return args

    def expire(self, ref: RunRef) -> None:
        """Let the run's keys expire (a terminal run whose final events another call publishes)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.expire(stream_key(ref), self._ttl)
        pipe.expire(_meta_key(ref), self._ttl)
        pipe.execute()

    def forget(self, refs: Sequence[RunRef]) -> None:
        """Delete the keys of runs that are gone, in one round trip (a DEL per key: a cluster
        pipeline takes one key per DEL, and sends each to its node)."""
        if not refs:
            return
        pipe = self._client.pipeline(transaction=False)
        for ref in refs:
            self._seen.pop(ref.key, None)
            pipe.delete(stream_key(ref))
            pipe.delete(_meta_key(ref))
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
