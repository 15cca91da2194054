"""Faults injected into a real system: worker machines crash (SIGKILL of the whole worker),
and the Redis that carries the broker and the event log goes away and comes back empty.
Every test runs twice: on a Redis broker, and on RabbitMQ (where a Redis fault takes away the
event log alone).

Every test runs real ``celery worker`` subprocesses with the short timings of DURABLE_ENV
(lease 1.5 s, sweep 0.3 s, pending re-send after 2 s) on a queue of its own, on PostgreSQL.
The Redis faults use a private ``redis-server`` (no persistence), never the shared one.
Each test prints one ``FAULT ...`` line with its counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from runs.domain.projects import Project
from runs.domain.runs import Run, RunKind, RunRequest, RunStatus
from runs.services.access import AccessService
from runs.settings import Settings
from runs.streams.event_log import RedisEventLog
from tests.conftest import (
    BROKERS,
    DURABLE_ENV,
    delete_queues,
    durable_settings,
    start_worker,
    stop_worker,
    wait_until_consuming,
)
from tests.support.durable_support import Live, live_services
from tests.support.private_servers import PrivateRedis
from tests.support.redis_hygiene import own

pytestmark = pytest.mark.worker

PID = "task:durable/pid"
ECHO = "task:echo"


# -- processes -----------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of all its threads, recursively)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            text = children.read_text()
        except OSError:
            continue
        for child in (int(p) for p in text.split()):
            found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def crash(worker: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL the worker's main process and its whole pool at once, like a machine crash."""
    pids = [worker.pid, *descendants(worker.pid)]
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (survivors := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not survivors, f"processes survived SIGKILL: {survivors}"
    return pids


@dataclass
class Workers:
    """The worker processes of one test: started on one queue, all stopped at the end."""

    settings: Settings
    directory: Path
    started: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        log_path = self.directory / f"worker-{len(self.started) + 1}.log"
        process = start_worker(
            self.settings, log_path, concurrency=concurrency, extra_env=DURABLE_ENV
        )
        self.started.append((process, log_path))
        wait_until_consuming(self.settings, process, log_path)
        return process

    def logs(self, tail: int = 6000) -> str:
        parts = [
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-tail:]}"
            for _, path in self.started
            if path.exists()
        ]
        return "\n".join(parts)

    def stop_all(self) -> None:
        for process, _ in self.started:
            stop_worker(process)
        if not self.settings.redis_broker:
            delete_queues(self.settings.effective_broker_url, self.settings.default_queue)


@contextmanager
def worker_processes(settings: Settings, directory: Path) -> Iterator[Workers]:
    workers = Workers(settings, directory)
    try:
        yield workers
    finally:
        workers.stop_all()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.crash()


@pytest.fixture(params=BROKERS)
def amqp_broker(request: pytest.FixtureRequest) -> str | None:
    """RabbitMQ's URL when the test runs on RabbitMQ; None on Redis (the test's Redis)."""
    if request.param == "redis":
        return None
    url: str = request.getfixturevalue("amqp_url")
    return url


# -- runs ----------------------------------------------------------------------------------


@pytest.fixture
def fault_project(pg_engine: sa.Engine) -> Project:
    return AccessService(pg_engine).create_project(f"f-{uuid.uuid4().hex[:12]}")


def submit(live: Live, project: Project, target: str, config: Any, **options: Any) -> Run:
    run, duplicate = live.runs.create(
        project,
        RunRequest(
            kind=RunKind.TASK,
            owner_kind="project",
            owner_id=project.id,
            target=target,
            config=config,
            **options,
        ),
    )
    assert not duplicate
    return run


def wait_all(
    live: Live, project: Project, run_ids: list[str], check: Any, timeout: float
) -> dict[str, Run]:
    """The runs once ``check`` holds for all of them, or as they are when time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        current = {run_id: live.runs.get(project, run_id) for run_id in run_ids}
        if all(check(run) for run in current.values()) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def terminal(run: Run) -> bool:
    return run.status.is_terminal


def running(run: Run) -> bool:
    return run.status is RunStatus.RUNNING


def counter(redis_url: str, key: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.get(key) or 0)
    finally:
        client.close()


def summary(runs: dict[str, Run]) -> str:
    return "\n".join(
        f"{r.run_id}: {r.status.value} attempt={r.attempt} error={r.error} attempts={r.attempts}"
        for r in runs.values()
    )


def crash_mid_run(
    live: Live, workers: Workers, project: Project, key: str, *, backoff_limit: int
) -> tuple[Run, list[int], Run, float]:
    """Start a worker, crash it while a 3-second run executes, start another, and wait for
    the run to end: (run as submitted, killed pids, run as ended, seconds after the crash)."""
    first = workers.start()
    redis_url = workers.settings.redis_url
    run = submit(live, project, PID, {"seconds": 3, "counter": key}, backoff_limit=backoff_limit)
    live.wait_running(project, run.run_id, timeout=20)
    deadline = time.monotonic() + 10
    while counter(redis_url, key) < 1:  # the task's code is executing in a pool process
        assert time.monotonic() < deadline, workers.logs()
        time.sleep(0.05)
    killed = crash(first)
    assert live.runs.get(project, run.run_id).status is RunStatus.RUNNING

    crashed_at = time.monotonic()
    workers.start()
    try:
        done = live.wait_terminal(project, run.run_id, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{workers.logs()}") from None
    return run, killed, done, time.monotonic() - crashed_at


# -- a worker machine crashes ----------------------------------------------------------------


def test_a_run_whose_worker_is_killed_mid_run_completes_on_a_new_worker_as_attempt_two(
    postgres_url: str,
    amqp_broker: str | None,
    redis_url: str,
    pg_engine: sa.Engine,
    event_log: RedisEventLog,
    fault_project: Project,
    tmp_path: Path,
) -> None:
    settings = durable_settings(postgres_url, redis_url, broker_url=amqp_broker)
    key = own("runs-test:faults")
    with (
        worker_processes(settings, tmp_path) as workers,
        live_services(settings, pg_engine, event_log) as live,
    ):
        run, killed, done, took = crash_mid_run(live, workers, fault_project, key, backoff_limit=1)
        assert len(killed) >= 3, f"expected the main process and 2 pool processes: {killed}"

        assert done.status is RunStatus.COMPLETED, (
            f"{summary({run.run_id: done})}\n{workers.logs()}"
        )
        assert done.attempt == 2
        assert len(done.attempts) == 2
        assert done.attempts[0].attempt == 1
        assert done.attempts[0].status == "failed"
        assert done.attempts[0].error.code == "worker_lost"
        assert done.attempts[1].status == "completed"
        assert done.output["pid"] not in killed
        assert counter(redis_url, key) == 2, "the task ran other than twice"
        types = live.event_types(fault_project, run.run_id)
        assert types[-1] == "RUN_FINISHED", types
        assert types.count("RUN_FINISHED") == 1 and "RUN_ERROR" not in types, types
        print(f"FAULT sigkill-retry: completed attempt=2 in {took:.1f} s after the crash")


def test_a_run_whose_worker_is_killed_mid_run_with_no_retry_left_fails_as_worker_lost(
    postgres_url: str,
    amqp_broker: str | None,
    redis_url: str,
    pg_engine: sa.Engine,
    event_log: RedisEventLog,
    fault_project: Project,
    tmp_path: Path,
) -> None:
    settings = durable_settings(postgres_url, redis_url, broker_url=amqp_broker)
    key = own("runs-test:faults")
    with (
        worker_processes(settings, tmp_path) as workers,
        live_services(settings, pg_engine, event_log) as live,
    ):
        run, _, done, took = crash_mid_run(live, workers, fault_project, key, backoff_limit=0)

        assert done.status is RunStatus.FAILED, summary({run.run_id: done})
        assert done.error is not None and done.error.code == "worker_lost"
        assert done.attempt == 1
        assert [a.error.code for a in done.attempts if a.error] == ["worker_lost"]
        assert done.completed_at is not None
        time.sleep(1)  # nothing runs it again
        assert counter(redis_url, key) == 1
        types = live.event_types(fault_project, run.run_id)
        assert types[-1] == "RUN_ERROR", types
        assert types.count("RUN_ERROR") == 1 and "RUN_FINISHED" not in types, types
        print(f"FAULT sigkill-no-retry: failed worker_lost in {took:.1f} s after the crash")


def test_every_run_of_a_busy_worker_killed_mid_batch_reaches_a_terminal_status(
    postgres_url: str,
    amqp_broker: str | None,
    redis_url: str,
    pg_engine: sa.Engine,
    event_log: RedisEventLog,
    fault_project: Project,
    tmp_path: Path,
) -> None:
    settings = durable_settings(postgres_url, redis_url, broker_url=amqp_broker)
    key = own("runs-test:faults")
    with (
        worker_processes(settings, tmp_path) as workers,
        live_services(settings, pg_engine, event_log) as live,
    ):
        first = workers.start(concurrency=2)
        ids = [
            submit(live, fault_project, PID, {"seconds": 2, "counter": key}, backoff_limit=1).run_id
            for _ in range(6)
        ]
        # Kill once two runs are executing and nothing has finished yet.
        deadline = time.monotonic() + 20
        while True:
            now = {i: live.runs.get(fault_project, i).status for i in ids}
            in_flight = [i for i, s in now.items() if s is RunStatus.RUNNING]
            if len(in_flight) == 2 and counter(redis_url, key) >= 2:
                break
            assert time.monotonic() < deadline, f"{now}\n{workers.logs()}"
            time.sleep(0.05)
        crash(first)
        statuses_at_crash = {i: live.runs.get(fault_project, i).status for i in ids}

        workers.start(concurrency=2)
        final = wait_all(live, fault_project, ids, terminal, timeout=40)

        accepted = len(ids)
        ended = [r for r in final.values() if r.status.is_terminal]
        completed = [r for r in ended if r.status is RunStatus.COMPLETED]
        failed = [r for r in ended if r.status is RunStatus.FAILED]
        lost = accepted - len(ended)
        retried = [r for r in completed if r.attempt == 2]
        print(
            f"FAULT sigkill: accepted={accepted} terminal={len(ended)} "
            f"completed={len(completed)} failed={len(failed)} lost={lost} "
            f"(running at the crash={sum(s is RunStatus.RUNNING for s in statuses_at_crash.values())}, "
            f"completed as attempt 2={len(retried)}, executions={counter(redis_url, key)})"
        )
        assert lost == 0, f"{summary(final)}\n{workers.logs()}"
        assert len(completed) == accepted, summary(final)
        for run_id in in_flight:
            assert final[run_id].attempts[0].error.code == "worker_lost"
            assert final[run_id].attempt == 2


# -- Redis (broker and event log) goes away --------------------------------------------------


def test_every_run_accepted_while_redis_is_down_and_back_reaches_a_terminal_status(
    postgres_url: str,
    amqp_broker: str | None,
    pg_engine: sa.Engine,
    private_redis: PrivateRedis,
    fault_project: Project,
    tmp_path: Path,
) -> None:
    settings = durable_settings(postgres_url, private_redis.url, broker_url=amqp_broker)
    events = RedisEventLog.from_url(private_redis.url, ttl_seconds=3600)
    try:
        with (
            worker_processes(settings, tmp_path) as workers,
            live_services(settings, pg_engine, events) as live,
        ):
            workers.start()
            accepted: dict[str, str] = {}  # run id -> when it was submitted
            raised: list[str] = []
            slowest = {"up": 0.0, "down": 0.0}
            phase = "up"
            began = time.monotonic()
            while (elapsed := time.monotonic() - began) < 4:
                if phase == "up" and elapsed >= 1:
                    private_redis.crash()
                    phase = "down"
                elif phase == "down" and elapsed >= 2.5:
                    private_redis.start()
                    phase = "back"
                sent = time.monotonic()
                try:
                    run = submit(live, fault_project, ECHO, {"n": len(accepted)})
                    accepted[run.run_id] = phase
                except Exception as exc:
                    raised.append(f"{phase}: {exc!r}")
                key = "down" if phase == "down" else "up"
                slowest[key] = max(slowest[key], time.monotonic() - sent)
                time.sleep(0.05)
            if phase != "back":  # submits were slow: make sure Redis is back
                private_redis.start()
            back_at = time.monotonic()

            ids = list(accepted)
            final = wait_all(live, fault_project, ids, terminal, timeout=40)
            settled = time.monotonic() - back_at
            ended = [r for r in final.values() if r.status.is_terminal]
            completed = [r for r in ended if r.status is RunStatus.COMPLETED]
            by_phase = {
                p: sum(1 for v in accepted.values() if v == p) for p in ("up", "down", "back")
            }
            lost = len(ids) - len(ended)
            print(
                f"FAULT redis-outage: accepted={len(ids)} terminal={len(ended)} "
                f"completed={len(completed)} failed={len(ended) - len(completed)} lost={lost} "
                f"raised={len(raised)} accepted_while_down={by_phase['down']} "
                f"(before={by_phase['up']}, after={by_phase['back']}) "
                f"slowest_submit_up={slowest['up']:.2f}s slowest_submit_down={slowest['down']:.2f}s "
                f"all_terminal_after={settled:.1f}s"
            )
            if raised:
                print("FAULT redis-outage: submits that raised:", *raised[:5], sep="\n  ")
            assert by_phase["down"] > 0, "no submit happened while Redis was down"
            assert lost == 0, f"{summary(final)}\n{workers.logs()}"
            assert not raised, raised
            # A run whose job was taken just before Redis went away can be claimed in SQL and
            # then fail to append its opening events: the job raises, and the sweeper fails
            # the run as worker_lost (see the report). Anything else must have completed.
            not_completed = {i: r for i, r in final.items() if r.status is not RunStatus.COMPLETED}
            if not_completed:
                print("FAULT redis-outage: not completed:", summary(not_completed))
            unexplained = {
                i: r
                for i, r in not_completed.items()
                if r.error is None or r.error.code != "worker_lost"
            }
            assert not unexplained, f"{summary(unexplained)}\n{workers.logs()}"
    finally:
        events.client.close()


def test_runs_in_flight_when_redis_restarts_empty_all_reach_a_terminal_status(
    postgres_url: str,
    amqp_broker: str | None,
    pg_engine: sa.Engine,
    private_redis: PrivateRedis,
    fault_project: Project,
    tmp_path: Path,
) -> None:
    settings = durable_settings(postgres_url, private_redis.url, broker_url=amqp_broker)
    events = RedisEventLog.from_url(private_redis.url, ttl_seconds=3600)
    try:
        with (
            worker_processes(settings, tmp_path) as workers,
            live_services(settings, pg_engine, events) as live,
        ):
            workers.start(concurrency=2)
            # Two runs execute; two more wait in the queue, which the restart empties.
            ids = [submit(live, fault_project, PID, {"seconds": 2}).run_id for _ in range(4)]
            deadline = time.monotonic() + 20
            while True:
                now = {i: live.runs.get(fault_project, i).status for i in ids}
                in_flight = [i for i, s in now.items() if s is RunStatus.RUNNING]
                if len(in_flight) == 2:
                    break
                assert time.monotonic() < deadline, f"{now}\n{workers.logs()}"
                time.sleep(0.05)
            seen_before = {
                i: live.runs.events(fault_project, i, after=0, limit=100).items for i in in_flight
            }
            private_redis.crash()
            time.sleep(0.5)
            private_redis.start()
            restarted_at = time.monotonic()

            final = wait_all(live, fault_project, ids, terminal, timeout=40)
            settled = time.monotonic() - restarted_at
            ended = [r for r in final.values() if r.status.is_terminal]
            completed = [r for r in ended if r.status is RunStatus.COMPLETED]
            lost_worker = [
                r
                for r in ended
                if r.status is RunStatus.FAILED
                and r.error is not None
                and r.error.code == "worker_lost"
            ]
            other = [r for r in ended if r not in completed and r not in lost_worker]
            lost = len(ids) - len(ended)
            print(
                f"FAULT redis-restart: accepted={len(ids)} in_flight={len(in_flight)} "
                f"terminal={len(ended)} completed={len(completed)} "
                f"failed_worker_lost={len(lost_worker)} failed_other={len(other)} lost={lost} "
                f"all_terminal_after={settled:.1f}s"
            )
            for run_id in in_flight:
                before = [(e.event_id, e.event_type) for e in seen_before[run_id]]
                after = [
                    (e.event_id, e.event_type)
                    for e in live.runs.events(fault_project, run_id, after=0, limit=100).items
                ]
                print(f"FAULT redis-restart: events of in-flight {run_id}: {before} -> {after}")
                # A client that read up to the last id before the restart still sees the end.
                last_read = before[-1][0]
                later = live.runs.events(fault_project, run_id, after=last_read, limit=100)
                assert later.items and later.items[-1].event_type in ("RUN_FINISHED", "RUN_ERROR")
            assert lost == 0, f"{summary(final)}\n{workers.logs()}"
            assert not other, f"{summary({r.run_id: r for r in other})}\n{workers.logs()}"
    finally:
        events.client.close()


def test_runs_picked_up_while_the_event_log_is_away_complete_once_it_is_back(
    postgres_url: str,
    amqp_broker: str | None,
    redis_url: str,
    pg_engine: sa.Engine,
    private_redis: PrivateRedis,
    fault_project: Project,
    tmp_path: Path,
) -> None:
    # The broker stays up (the shared Redis); the event log's Redis goes away for about 1 s
    # while workers claim runs: their opening events wait for it instead of failing the job.
    settings = durable_settings(
        postgres_url, private_redis.url, broker_url=amqp_broker or redis_url
    )
    events = RedisEventLog.from_url(private_redis.url, ttl_seconds=3600)
    try:
        with (
            worker_processes(settings, tmp_path) as workers,
            live_services(settings, pg_engine, events) as live,
        ):
            workers.start()
            private_redis.crash()
            ids = [submit(live, fault_project, ECHO, {"n": i}).run_id for i in range(4)]
            time.sleep(1.0)
            private_redis.start()
            final = wait_all(live, fault_project, ids, terminal, timeout=30)
            completed = [r for r in final.values() if r.status is RunStatus.COMPLETED]
            print(
                f"FAULT event-log-outage: accepted={len(ids)} "
                f"terminal={sum(terminal(r) for r in final.values())} "
                f"completed={len(completed)} lost={sum(not terminal(r) for r in final.values())}"
            )
            assert len(completed) == len(ids), summary(final) + workers.logs()
            assert all(r.attempt == 1 for r in completed), summary(final)
    finally:
        events.client.close()
