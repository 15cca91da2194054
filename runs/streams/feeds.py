"""One reader per followed run: the followers of a run in this API process share the blocking
reads of its Redis stream, and each event is encoded as a frame once, not once per follower.

A follower subscribes first, then reads what the stream holds after its last event itself
(``EventFollower.since``), then takes the feed's frames, skipping ids it has sent: an event is
either in the stream when it reads it, or read by the feed after it subscribed, so nothing is
missed and nothing is sent twice. The feed starts at the stream's newest event when its first
follower subscribes, and stops after the terminal event or when its last follower leaves. A
follower that falls ``queue_size`` frames behind is dropped from the feed; it reads the stream
itself again and subscribes anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from runs.domain.events import RUN_ERROR, RUN_FINISHED, RunEvent
from runs.domain.runs import RunRef
from runs.streams.following import EventFollower

log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({RUN_FINISHED, RUN_ERROR})
Frame = tuple[RunEvent, bytes]


class Subscription:
    def __init__(self, queue_size: int) -> None:
        self.queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=queue_size)
        self.lagged = False

    def offer(self, item: Frame) -> bool:
        """Queue a frame; False (and ``lagged``) when the follower is too far behind."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lagged = True
            return False
        return True


class _Feed:
    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.task: asyncio.Task[None] | None = None
        # Set once the feed knows where it starts: a follower reads the stream only then.
        self.started = asyncio.Event()


class RunFeeds:
    def __init__(
        self,
        follower: EventFollower,
        encode: Callable[[RunEvent], bytes],
        *,
        block_seconds: float,
        queue_size: int = 10_000,
    ) -> None:
        self._follower = follower
        self._encode = encode
        self._block = block_seconds
        self._queue_size = queue_size
        self._feeds: dict[RunRef, _Feed] = {}

    @contextlib.asynccontextmanager
    async def subscribe(self, ref: RunRef) -> AsyncIterator[Subscription]:
        """Frames of the events the run's stream receives from now on (once it has entered)."""
        subscription = Subscription(self._queue_size)
        feed = self._feeds.get(ref)
        if feed is None:
            feed = self._feeds[ref] = _Feed()
            feed.task = asyncio.get_running_loop().create_task(self._read(ref, feed))
        feed.subscribers.add(subscription)
        try:
            await feed.started.wait()
            yield subscription
        finally:
            feed.subscribers.discard(subscription)
            if not feed.subscribers and self._feeds.get(ref) is feed:
                del self._feeds[ref]
                if feed.task is not None:
                    feed.task.cancel()

    def feeding(self) -> int:
        """How many runs have a reader now."""
        return len(self._feeds)

    async def _read(self, ref: RunRef, feed: _Feed) -> None:
        try:
            last = await self._follower.last_id(ref)
            feed.started.set()
            while feed.subscribers:
                events = await self._follower.after(ref, last, block_seconds=self._block)
                for event in events:
                    item = (event, self._encode(event))
                    for subscription in list(feed.subscribers):
                        if not subscription.offer(item):
                            feed.subscribers.discard(subscription)
                    last = event.event_id
                if any(e.event_type in TERMINAL_EVENTS for e in events):
                    break
        except asyncio.CancelledError:
            raise
        except Exception:  # the followers read the stream themselves and subscribe anew
            log.exception("the reader of %s failed", ref)
            for subscription in feed.subscribers:
                subscription.lagged = True
        finally:
            feed.started.set()
            if self._feeds.get(ref) is feed:
                del self._feeds[ref]
