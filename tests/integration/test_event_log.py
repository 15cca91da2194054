"""The Redis event log on the real Redis and on a Redis Cluster: a batch of events travels as
one joined argument, so event boundaries, ids and payloads must come back exactly as appended."""

from __future__ import annotations

import uuid

import pytest

from runs.domain.events import NewEvent
from runs.domain.runs import RunRef
from runs.streams.event_log import RedisEventLog
from tests.conftest import EventRedis
from tests.support.redis_hygiene import own_project_id

pytestmark = pytest.mark.redis


@pytest.fixture
def event_log(event_redis: EventRedis) -> RedisEventLog:
    return event_redis.log


AWKWARD = [
    {"logs": "two\nlines\r\nand a tab\t"},
    {"logs": "line\u2028separator\u2029paragraph"},
    {"text": "ünïcödé ✓ 𝄞"},
    {},
    None,
    "a bare string",
    [1, 2, {"nested": "\n"}],
    {"int keys": {1: "one"}},
]


def new_ref() -> RunRef:
    return RunRef(own_project_id(), f"run_{uuid.uuid4()}")


def test_a_batch_keeps_every_event_whole_and_in_order(event_log: RedisEventLog) -> None:
    ref = new_ref()
    assert event_log.open(ref, "w1", [NewEvent("RUN_STARTED", {"type": "RUN_STARTED"})])
    events = [NewEvent(f"CUSTOM_{i}", payload) for i, payload in enumerate(AWKWARD)]
    ids = event_log.append(ref, events)
    assert ids == list(range(2, 2 + len(events)))
    stored = event_log.read(ref, after=1, limit=100)
    assert [e.event_id for e in stored] == ids
    assert [e.event_type for e in stored] == [e.event_type for e in events]
    expected = [*AWKWARD[:-1], {"int keys": {"1": "one"}}]  # JSON keys are strings
    assert [e.payload for e in stored] == expected


def test_a_large_batch_takes_consecutive_ids(event_log: RedisEventLog) -> None:
    ref = new_ref()
    assert event_log.open(ref, "w1", [])
    first = event_log.append(ref, [NewEvent("LINE", {"i": i}) for i in range(1000)])
    second = event_log.append(ref, [NewEvent("LINE", {"i": 1000})])
    assert first == list(range(1, 1001)) and second == [1001]
    stored = event_log.read(ref, after=0, limit=2000)
    assert [e.payload["i"] for e in stored] == list(range(1001))


def test_an_event_type_with_a_newline_is_refused_and_appends_nothing(
    event_log: RedisEventLog,
) -> None:
    ref = new_ref()
    assert event_log.open(ref, "w1", [])
    with pytest.raises(ValueError, match="newline"):
        event_log.append(ref, [NewEvent("OK", {}), NewEvent("BAD\nTYPE", {})])
    assert event_log.read(ref, after=0, limit=10) == []
