"""The job of runs that travel together (runs of one target created together, one Celery
message): it claims them in one statement and runs their attempts one after another in this
pool process, each exactly as a run of its own would run (its guard, cancel flag, events and
retries); attempts that end are recorded together (``GroupCloser``).

No run waits long behind another: when an attempt has run longer than
``RUNS_WORKER_HANDOFF_MS``, the runs of its group not started yet are handed to other pool
processes (back to pending, the attempt not counted, sent again a job each) by the process's
watch thread (``GroupCursor``). A worker that is draining hands the rest off at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from runs.domain.clock import utcnow
from runs.domain.runs import Run, RunRef
from runs.observability import metrics
from runs.services.attempt_groups import Ending
from workers.execution import guard
from workers.execution.pollers import Poller
from workers.execution.results import DROPPED, SKIPPED, ended
from workers.execution.runtime import WorkerRuntime
from workers.execution.task_runs import Closing, run_claimed

log = logging.getLogger(__name__)

CLOSE_WAIT_SECONDS = 0.005  # how long an ended attempt waits for others to be recorded with
CLOSE_MAX = 64  # attempts recorded in one go at most

# What a group's job returns, run by run: (run_id, attempt, how its attempt ended). Flower's
# events of the job's runs are made from it (workers/flower_events.py).
GroupResult = list[tuple[str, int, str]]


@dataclass
class _Recorded:
    result: str


class GroupCloser:
    """Terminal outcomes of a group's attempts, recorded together: once ``CLOSE_MAX`` wait, when
    the oldest has waited ``CLOSE_WAIT_SECONDS`` (checked as attempts end and by the watch
    thread), and when the group is done."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self._rt = runtime
        self._waiting: list[tuple[Ending, _Recorded]] = []
        self._oldest = 0.0
        self._lock = threading.Lock()
        self._recording = threading.Lock()  # one batch at a time, in order

    def close(self, ending: Ending) -> Closing:
        recorded = _Recorded(ended(ending.outcome))
        with self._lock:
            if not self._waiting:
                self._oldest = time.monotonic()
            self._waiting.append((ending, recorded))
            full = len(self._waiting) >= CLOSE_MAX
        if full or self.due_at() <= time.monotonic():
            self.flush()
        return recorded

    def due_at(self) -> float:
        """When the waiting outcomes are due to be recorded (infinity when none waits)."""
        with self._lock:
            return self._oldest + CLOSE_WAIT_SECONDS if self._waiting else float("inf")

    def flush(self) -> None:
        with self._recording:
            with self._lock:
                batch, self._waiting = self._waiting, []
            if not batch:
                return
            answers = self._rt.groups.finish([ending for ending, _ in batch])
            for (ending, recorded), finished in zip(batch, answers, strict=True):
                if not finished:
                    self._rt.attempts.record_stop(ending.run)
                    recorded.result = f"{DROPPED}: the run was no longer this attempt's"


class GroupCursor:
    """The runs of a group not started yet: ``next`` hands out the next one. The rest go to
    other pool processes when an attempt has run longer than ``RUNS_WORKER_HANDOFF_MS`` (the
    watch thread hands them off, a job each, so that none waits behind a long run again), or
    when the worker drains."""

    def __init__(
        self, runtime: WorkerRuntime, runs: Sequence[Run], owner: str, closer: GroupCloser
    ) -> None:
        self._rt = runtime
        self._rest = deque(runs)
        self._owner = owner
        self._closer = closer
        self._lock = threading.Lock()
        self._bound = runtime.settings.worker_handoff_ms / 1000
        self._since = time.monotonic()  # when the running attempt started (or the claim)

    def next(self) -> Run | None:
        if guard.drain_requested():
            self._hand_off(jobs=1)
            return None
        with self._lock:
            if not self._rest:
                return None
            self._since = time.monotonic()
            return self._rest.popleft()

    def due_at(self) -> float:
        with self._lock:
            handoff = self._since + self._bound if self._rest else float("inf")
        return min(handoff, self._closer.due_at())

    def tick(self, now: float) -> None:
        """The watch thread's: record what waits, and hand the rest off when the running
        attempt is past the bound."""
        if self._closer.due_at() <= now:
            self._closer.flush()
        with self._lock:
            late = bool(self._rest) and self._since + self._bound <= now
        if late:
            self._hand_off(jobs=None)

    def _hand_off(self, *, jobs: int | None) -> None:
        """Hand the rest off, in ``jobs`` jobs (None: a job each)."""
        with self._lock:
            rest, self._rest = list(self._rest), deque()
        if rest:
            handed = self._rt.groups.hand_off(rest, owner=self._owner, jobs=jobs or len(rest))
            log.info("handed %d runs of a group to other processes", len(handed))


def execute(runtime: WorkerRuntime, ref: RunRef) -> str:
    """Execute one attempt of the run ``ref`` (a job of its own); returns what happened, for
    the worker's log. Recorded as a group's attempts are: a run that ends within a few
    milliseconds opens its stream with its close, one round trip for both.

    Every call that changes the run is made on behalf of ``owner``, a token unique to this
    claim, and retried while storage is unreachable: a retry after a lost answer completes the
    same change (``runs.services.attempts``)."""
    owner = runtime.new_owner()
    run = runtime.attempts.claim(
        ref, owner=owner, lease_seconds=runtime.settings.worker_lease_seconds
    )
    if run is None:
        return f"{SKIPPED}: not pending"  # a duplicate message, or a run already running or ended
    closer = GroupCloser(runtime)
    result = run_claimed(runtime, run, owner, closer)
    closer.flush()
    return result if isinstance(result, str) else result.result


def execute_group(runtime: WorkerRuntime, jobs: Sequence[tuple[RunRef, int]]) -> GroupResult:
    """Run the attempts of a group's runs; how each ended (the runs handed off are left out:
    the job they are sent in reports them)."""
    owner = runtime.new_owner()
    refs = [ref for ref, _ in jobs]
    claimed = runtime.groups.claim(
        refs, owner=owner, lease_seconds=runtime.settings.worker_lease_seconds
    )
    taken = {run.ref for run in claimed}
    results: list[tuple[str, int, str | Closing]] = [
        (ref.run_id, attempt, f"{SKIPPED}: not pending")
        for ref, attempt in jobs
        if ref not in taken
    ]
    closer = GroupCloser(runtime)
    cursor = GroupCursor(runtime, claimed, owner, closer)
    with _watch().watching(cursor):
        while (run := cursor.next()) is not None:
            run = _started(run)
            try:
                result = run_claimed(runtime, run, owner, closer)
            except Exception as exc:  # one run's failure is not the group's: the sweeper has it
                log.exception("the attempt of %s failed in the worker", run.ref)
                result = f"{DROPPED}: the worker failed: {exc!r}"
            results.append((run.run_id, run.attempt, result))
        closer.flush()
    done = [
        (run_id, attempt, r if isinstance(r, str) else r.result) for run_id, attempt, r in results
    ]
    for run_id, attempt, result in done:
        log.info("run %s attempt %d: %s", run_id, attempt, result)
    return done


def _started(run: Run) -> Run:
    """The run as its attempt starts now: the claim took the whole group at once, the attempt
    starts later (its first start, too, when it is one)."""
    now = utcnow()
    if run.first_start:
        metrics.run_started(run.target, run.created_at, now)
        return dataclasses.replace(run, started_at=now, attempt_started_at=now)
    return dataclasses.replace(run, attempt_started_at=now)


class _Watch:
    """The thread of a process that looks after its running group: it records the outcomes
    that waited long enough and hands the rest off when the group is past its time. It looks
    every ``CLOSE_WAIT_SECONDS`` while groups run (``pollers.Poller``)."""

    def __init__(self) -> None:
        self._cursor: GroupCursor | None = None
        self._poller = Poller("runs-group-watch", self._look, period=CLOSE_WAIT_SECONDS)

    @contextmanager
    def watching(self, cursor: GroupCursor) -> Iterator[None]:
        self._cursor = cursor
        self._poller.poke()
        try:
            yield
        finally:
            self._cursor = None

    def _look(self) -> bool:
        cursor, now = self._cursor, time.monotonic()
        if cursor is None:
            return False
        if cursor.due_at() <= now:
            cursor.tick(now)
        return True


_watches: dict[int, _Watch] = {}
_watches_lock = threading.Lock()


def _watch() -> _Watch:
    """The watch of this process (a forked pool process starts its own)."""
    pid = os.getpid()
    watch = _watches.get(pid)
    if watch is None:
        with _watches_lock:
            watch = _watches.get(pid) or _watches.setdefault(pid, _Watch())
    return watch
