"""The run event log on a Redis Cluster (the session's three primaries, ``redis_cluster``):
what spans runs on several nodes at once. The calls on one run are the tests of the event log
itself, which run on a single Redis and on the cluster (test_event_log, test_records,
test_lost_answers, test_event_feeds, test_retention).

Each test picks run ids until their keys land on every node, so that a batch, a follower or a
deletion crosses nodes."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from redis.cluster import RedisCluster
from redis.crc import key_slot

from runs.domain.events import (
    RUN_FINISHED,
    RUN_STARTED,
    Closing,
    NewEvent,
    RunEvent,
    log_event,
    numbered,
    started_events,
    terminal_event,
)
from runs.domain.runs import RunRef
from runs.services.transient import TRANSIENT_ERRORS
from runs.streams import scripts
from runs.streams.event_log import RedisEventLog, stream_key
from runs.streams.feeds import RunFeeds
from runs.streams.following import EventFollower
from runs.wiring import wire
from tests.conftest import base_settings
from tests.support.redis_cluster import PrivateRedisCluster
from tests.support.redis_hygiene import own_project_id

pytestmark = pytest.mark.redis

TTL = 3600


@pytest.fixture(scope="module")
def nodes(redis_cluster: PrivateRedisCluster) -> Iterator[RedisCluster]:
    """A plain cluster client, to look at where keys are."""
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def log(redis_cluster: PrivateRedisCluster) -> Iterator[RedisEventLog]:
    created = RedisEventLog.from_url(redis_cluster.url, ttl_seconds=TTL, cluster=True)
    yield created
    created.client.close()


def node_of(nodes: RedisCluster, ref: RunRef) -> str:
    return str(nodes.get_node_from_key(stream_key(ref)).name)


def refs_on_every_node(nodes: RedisCluster, per_node: int = 1) -> list[RunRef]:
    """Runs of one project whose keys are on every primary, ``per_node`` on each, ordered
    node after node (so ``[::per_node]`` is one run per node)."""
    project = own_project_id()
    found: dict[str, list[RunRef]] = {str(n.name): [] for n in nodes.get_primaries()}
    while any(len(refs) < per_node for refs in found.values()):
        ref = RunRef(project, f"run_{uuid.uuid4()}")
        on = found[node_of(nodes, ref)]
        if len(on) < per_node:
            on.append(ref)
    return [ref for refs in found.values() for ref in refs]


def keys(ref: RunRef) -> list[str]:
    return [stream_key(ref), f"runs:{{{ref.key}}}:meta"]


def shape(answer: tuple[int, list[RunEvent]] | None) -> tuple[int, list[tuple[int, str]]]:
    assert answer is not None
    first, before = answer
    return first, [(e.event_id, e.event_type) for e in before]


def test_the_keys_of_a_run_share_one_slot_and_runs_spread_over_every_node(
    nodes: RedisCluster,
) -> None:
    refs = refs_on_every_node(nodes, per_node=2)
    assert len({node_of(nodes, ref) for ref in refs}) == 3
    for ref in refs:
        stream, meta = keys(ref)
        assert key_slot(stream.encode()) == key_slot(meta.encode())  # the hash tag {project/run}


def test_runs_on_every_node_close_and_publish_together_and_a_repeat_changes_nothing(
    log: RedisEventLog, nodes: RedisCluster
) -> None:
    refs = refs_on_every_node(nodes, per_node=2)
    opened, unopened = refs[::2], refs[1::2]  # one of each on every node
    for ref in opened:
        assert log.open(ref, "w1", started_events("echo"))
        assert log.append(ref, [log_event("working")], producer="w1", sequence="1") == [3]
    closings: list[Closing] = [(ref, "w1", 2, None) for ref in opened]
    closings += [(ref, "w1", 2, started_events("echo")) for ref in unopened]

    answers = [shape(a) for a in log.close_attempts(closings)]
    assert (
        answers[:3] == [(4, [(1, RUN_STARTED), (2, "STEP_STARTED"), (3, "RUN_LOG_CAPTURED")])] * 3
    )
    assert answers[3:] == [(3, [(1, RUN_STARTED), (2, "STEP_STARTED")])] * 3
    assert [shape(a) for a in log.close_attempts(closings)] == answers  # a retry: the same

    now = datetime.now(UTC)
    finals = [
        (ref, numbered([log_event("done"), terminal_event("completed")], first, now))
        for (ref, *_), (first, _) in zip(closings, answers, strict=True)
    ]
    log.publish_many(finals)
    log.publish_many(finals)  # a retry adds nothing
    for (ref, final), (first, before) in zip(finals, answers, strict=True):
        stored = log.read(ref, after=0, limit=100)
        assert [e.event_id for e in stored] == list(range(1, first + 2))
        assert [(e.event_id, e.event_type) for e in stored[: first - 1]] == before
        assert stored[-2:] == final and stored[-1].event_type == RUN_FINISHED
        assert all(0 < nodes.ttl(key) <= TTL for key in keys(ref))
        assert log.append(ref, [log_event("too late")]) == []


def test_scripts_lost_by_every_node_are_loaded_again_on_every_primary(
    log: RedisEventLog, nodes: RedisCluster, redis_cluster: PrivateRedisCluster
) -> None:
    refs = refs_on_every_node(nodes)

    def forget_scripts() -> None:  # as a restart of every node would
        for port in redis_cluster.ports:
            with redis.Redis(host="127.0.0.1", port=port) as node:
                node.script_flush()

    forget_scripts()
    for ref in refs:  # one call at a time
        assert log.open(ref, "w1", [NewEvent(RUN_STARTED, {})])
    forget_scripts()
    closed = log.close_attempts([(ref, "w1", 1, None) for ref in refs])  # one batch
    assert [shape(c) for c in closed] == [(2, [(1, RUN_STARTED)])] * 3
    texts = (scripts.APPEND, scripts.OPEN, scripts.CLOSE, scripts.PUBLISH)
    shas = [hashlib.sha1(text.encode()).hexdigest() for text in texts]
    for port in redis_cluster.ports:
        with redis.Redis(host="127.0.0.1", port=port) as node:
            assert node.script_exists(*shas) == [True] * 4, port


def test_the_cancel_flags_of_runs_on_every_node_are_read_in_one_call(
    log: RedisEventLog, nodes: RedisCluster
) -> None:
    cancelled, stopped, running = refs_on_every_node(nodes)
    for ref in (cancelled, stopped, running):
        assert log.open(ref, "w1", [NewEvent(RUN_STARTED, {})])
    log.close(cancelled, 2, cancel=True)
    log.request_stop(stopped, "slow")
    watched = [(cancelled, None), (stopped, "slow"), (stopped, None), (running, "fast")]
    assert log.cancel_requested(watched) == {(cancelled, None), (stopped, "slow")}
    assert not log.open(cancelled, "w2", [NewEvent(RUN_STARTED, {})])  # a cancelled run


def test_forget_deletes_the_keys_of_runs_on_every_node_and_a_scan_sees_every_node(
    log: RedisEventLog, nodes: RedisCluster
) -> None:
    refs = refs_on_every_node(nodes, per_node=2)
    for ref in refs:
        assert log.open(ref, "w1", [NewEvent(RUN_STARTED, {})])
    pattern = f"runs:{{{refs[0].project_id}/*"
    found = set(nodes.scan_iter(match=pattern, count=1000))  # every primary's keys
    assert found == {key.encode() for ref in refs for key in keys(ref)}
    log.forget(refs)
    assert list(nodes.scan_iter(match=pattern, count=1000)) == []
    log.forget([])  # nothing to do


def test_followers_of_runs_on_every_node_each_get_their_runs_events(
    log: RedisEventLog, nodes: RedisCluster, redis_cluster: PrivateRedisCluster
) -> None:
    refs = refs_on_every_node(nodes)
    for n, ref in enumerate(refs):
        assert log.open(ref, "w1", [NewEvent(RUN_STARTED, {"n": n})])

    async def follow() -> list[list[int]]:
        follower = EventFollower.from_url(
            redis_cluster.url, longest_block_seconds=1, followers=10, cluster=True
        )
        feeds = RunFeeds(follower, lambda e: str(e.event_id).encode(), block_seconds=0.5)
        try:
            assert [await follower.last_id(ref) for ref in refs] == [1, 1, 1]
            assert [len(await follower.since(ref, 0)) for ref in refs] == [1, 1, 1]
            async with (
                feeds.subscribe(refs[0]) as a,
                feeds.subscribe(refs[1]) as b,
                feeds.subscribe(refs[2]) as c,
            ):
                assert feeds.feeding() == 3  # three readers, each on its run's node
                for n, ref in enumerate(refs):
                    events = [log_event(str(i)) for i in range(n + 1)]
                    await asyncio.to_thread(log.append, ref, events)
                return [await ids(sub.queue, n + 1) for n, sub in enumerate((a, b, c))]
        finally:
            await follower.close()

    assert asyncio.run(follow()) == [[2], [2, 3], [2, 3, 4]]


async def ids(queue: asyncio.Queue[tuple[RunEvent, bytes]], count: int) -> list[int]:
    return [(await asyncio.wait_for(queue.get(), 5))[0].event_id for _ in range(count)]


def test_a_process_starts_while_the_cluster_is_out_of_reach_and_works_once_it_is_up(
    tmp_path: Path,
) -> None:
    """As beside a single Redis: building the clients connects nothing, a call fails with an
    error a worker's services wait out, and the same clients work once the cluster is up."""
    cluster = PrivateRedisCluster(tmp_path / "later")  # its ports chosen, nothing started
    RedisEventLog.from_url(cluster.url, ttl_seconds=TTL, cluster=True).client.close()
    log = RedisEventLog.from_url(cluster.url, ttl_seconds=TTL, cluster=True)
    ref = RunRef(own_project_id(), "run_early")

    async def scenario() -> list[RunEvent]:
        follower = EventFollower.from_url(
            cluster.url, longest_block_seconds=1, followers=1, cluster=True
        )
        try:
            assert await follower.after(ref, 0, block_seconds=0.01) == []  # and it logs
            with pytest.raises(TRANSIENT_ERRORS):
                log.open(ref, "w1", [NewEvent(RUN_STARTED, {})])
            await asyncio.to_thread(cluster.start)
            assert log.open(ref, "w1", [NewEvent(RUN_STARTED, {})])
            return await follower.since(ref, 0)
        finally:
            await follower.close()

    try:
        followed = asyncio.run(scenario())
        assert followed == log.read(ref, after=0, limit=10) and len(followed) == 1
    finally:
        cluster.stop()
        log.client.close()


def test_the_cluster_setting_wires_the_event_log_to_the_cluster_and_wants_a_broker(
    sqlite_url: str, redis_url: str, redis_cluster: PrivateRedisCluster, nodes: RedisCluster
) -> None:
    with pytest.raises(ValidationError, match="broker_url"):
        base_settings(redis_url=redis_cluster.url, redis_cluster=True)
    settings = base_settings(
        database_url=sqlite_url,
        redis_url=redis_cluster.url,
        redis_cluster=True,
        broker_url=redis_url,  # Celery's broker: a single Redis
    )
    assert settings.effective_broker_url == redis_url and settings.redis_broker
    wired = wire(settings, pool_size=1, auth_cache_seconds=0)
    try:
        refs = refs_on_every_node(nodes)
        for ref in refs:
            assert wired.events.open(ref, "w1", [NewEvent(RUN_STARTED, {})])
        assert [nodes.xlen(stream_key(ref)) for ref in refs] == [1, 1, 1]
        assert wired.events.ping()
    finally:
        wired.close()
