"""The shared reader of a run's stream in the API (``runs.streams.feeds``), on the real Redis
and on a Redis Cluster: followers of one run share its reads and each event is encoded once; a
follower that falls behind is dropped and told so; a follower that joins late misses nothing."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from runs.domain.events import NewEvent, RunEvent
from runs.domain.runs import RunRef
from runs.streams.feeds import RunFeeds, Subscription
from tests.conftest import EventRedis
from tests.support.redis_hygiene import own_project_id


@pytest.fixture
def ref() -> RunRef:
    # A project id of the session: it deletes the run's keys when it ends.
    return RunRef(own_project_id(), f"run_{uuid.uuid4()}")


def progress(n: int) -> list[NewEvent]:
    return [NewEvent("PROGRESS_REPORTED", {"done": i}) for i in range(n)]


async def drain(subscription: Subscription, count: int) -> list[int]:
    ids = []
    while len(ids) < count:
        event, data = await asyncio.wait_for(subscription.queue.get(), 5)
        assert data == f"frame {event.event_id}".encode()
        ids.append(event.event_id)
    return ids


def test_the_followers_of_a_run_share_one_reader_and_each_event_is_encoded_once(
    event_redis: EventRedis, ref: RunRef
) -> None:
    event_log = event_redis.log
    encoded: list[int] = []

    def encode(event: RunEvent) -> bytes:
        encoded.append(event.event_id)
        return f"frame {event.event_id}".encode()

    async def scenario() -> list[list[int]]:
        follower = event_redis.follower(longest_block_seconds=1, followers=10)
        feeds = RunFeeds(follower, encode, block_seconds=0.5)
        try:
            event_log.append(ref, progress(2))  # before anyone follows: read by each itself
            async with (
                feeds.subscribe(ref) as a,
                feeds.subscribe(ref) as b,
                feeds.subscribe(ref) as c,
            ):
                assert feeds.feeding() == 1
                await asyncio.to_thread(event_log.append, ref, progress(5))
                got = await asyncio.gather(drain(a, 5), drain(b, 5), drain(c, 5))
            await asyncio.sleep(0)
            assert feeds.feeding() == 0  # the last follower left: the reader stopped
            return list(got)
        finally:
            await follower.close()

    got = asyncio.run(scenario())
    assert got == [[3, 4, 5, 6, 7]] * 3
    assert encoded == [3, 4, 5, 6, 7]


def test_a_follower_too_far_behind_is_dropped_and_told_so(
    event_redis: EventRedis, ref: RunRef
) -> None:
    event_log = event_redis.log

    async def scenario() -> tuple[bool, bool, list[int]]:
        follower = event_redis.follower(longest_block_seconds=1, followers=10)
        feeds = RunFeeds(
            follower, lambda e: f"frame {e.event_id}".encode(), block_seconds=0.5, queue_size=3
        )
        try:
            async with feeds.subscribe(ref) as slow, feeds.subscribe(ref) as quick:
                for _ in range(6):
                    await asyncio.to_thread(event_log.append, ref, progress(1))
                    await drain(quick, 1)
                return slow.lagged, quick.lagged, await drain(slow, 3)
        finally:
            await follower.close()

    slow_lagged, quick_lagged, slow_ids = asyncio.run(scenario())
    assert slow_lagged and not quick_lagged
    assert slow_ids == [1, 2, 3]  # what it had queued; it reads the rest from the stream
