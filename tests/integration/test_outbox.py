"""The outbox of an attempt's events (workers/execution/outbox.py) over the real Redis event log."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from runs.domain.events import NewEvent, log_event
from runs.domain.runs import RunRef
from runs.streams.event_log import RedisEventLog
from tests.support.redis_hygiene import own_project_id
from workers.execution.outbox import BATCH, EventOutbox


@pytest.fixture
def ref(event_log: RedisEventLog) -> Iterator[RunRef]:
    ref = RunRef(own_project_id(), f"run_{uuid.uuid4()}")
    yield ref
    event_log.client.delete(f"runs:{{{ref.key}}}:events", f"runs:{{{ref.key}}}:meta")


def lines(event_log: RedisEventLog, ref: RunRef) -> list[str]:
    return [e.payload["logs"] for e in event_log.read(ref, after=0, limit=100_000)]


def test_events_put_from_several_threads_arrive_each_in_its_order(
    event_log: RedisEventLog, ref: RunRef
) -> None:
    outbox = EventOutbox(lambda events, batch: event_log.append(ref, events) and None)

    def put(name: str) -> None:
        for i in range(3 * BATCH):
            outbox.put([log_event(f"{name} {i}")])

    threads = [threading.Thread(target=put, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outbox.flush()
    seen = lines(event_log, ref)
    assert len(seen) == 6 * BATCH
    for name in ("a", "b"):
        assert [s for s in seen if s.startswith(name)] == [f"{name} {i}" for i in range(3 * BATCH)]


def test_the_flusher_sends_waiting_events_without_being_asked(
    event_log: RedisEventLog, ref: RunRef
) -> None:
    outbox = EventOutbox(lambda events, batch: event_log.append(ref, events) and None)
    outbox.put([log_event("soon")])
    deadline = time.monotonic() + 2
    while lines(event_log, ref) != ["soon"]:
        assert time.monotonic() < deadline, "the flusher did not send the event"
        time.sleep(0.005)


def test_a_batch_that_could_not_be_sent_is_kept_and_sent_first_next_time(
    event_log: RedisEventLog, ref: RunRef
) -> None:
    failures = [ConnectionError("Redis away")]

    def send(events: Sequence[NewEvent], batch: int) -> None:
        if failures:
            raise failures.pop()
        event_log.append(ref, events)

    outbox = EventOutbox(send)
    outbox._pending.extend([log_event("one"), log_event("two")])  # waiting, flusher not woken
    with pytest.raises(ConnectionError):
        outbox.flush()
    outbox.put([log_event("three")])
    outbox.flush()
    assert lines(event_log, ref) == ["one", "two", "three"]
