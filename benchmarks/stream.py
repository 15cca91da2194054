"""Following a run's events over SSE (GET /runs/{id}/stream): the delay from a Redis append to
its receipt by each follower, with 1 follower and with many (1,000 by default) on one run.

One real `runs api` process on a fresh database; jobs go to a throwaway queue nothing consumes,
so the runs stay pending. This process appends events straight to the run's Redis stream
(RedisEventLog.append) at a fixed rate, each payload carrying its append time (time.time());
an asyncio client of raw sockets reads the frames and takes each event's delay on receipt.
Ends with a RUN_FINISHED event and checks that every stream closes. Reports the API's RSS and
CPU and the client's own CPU (client and API share this machine's cores).
Usage: python benchmarks/stream.py [--followers 1000] [--rate 100] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import sys
import time
import uuid
from array import array
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import REDIS_URL, fresh_database, start, stop, wait_for  # noqa: E402

TIME = re.compile(rb'"payload":\{"t":([0-9.]+)')
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class Follower:
    """One SSE connection; records the delay of each event it receives."""

    def __init__(self) -> None:
        self.delays = array("d")
        self.status = 0
        self.finished = False  # saw RUN_FINISHED
        self.closed = False  # the response body ended
        self.events = 0
        self.started = asyncio.Event()

    async def follow(self, host: str, port: int, path: str, token: str) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            self.started.set()
            raise
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            self.started.set()
            if self.status != 200 or b"chunked" not in head.lower():
                return
            pending = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    self.closed = True
                    return
                chunk = await reader.readexactly(size + 2)
                now = time.time()
                pending += chunk[:-2]
                *frames, pending = pending.split(b"\n\n")
                for frame in frames:
                    if frame.startswith(b":"):
                        continue
                    self.events += 1
                    found = TIME.search(frame)
                    if found:
                        self.delays.append(now - float(found.group(1)))
                    if b"\nevent: RUN_FINISHED\n" in frame:
                        self.finished = True
        finally:
            self.started.set()
            writer.close()


async def measure(
    label: str,
    base: httpx.URL,
    token: str,
    run_id: str,
    ref: object,
    log: object,
    api_pid: int,
    followers: int,
    rate: float,
    seconds: float,
) -> None:
    from runs.domain.events import RUN_FINISHED, NewEvent

    print(f"\n== {label}: {followers} follower(s), {rate:g} events/s for {seconds:g} s")
    host, port = base.host, base.port or 80
    rss_before = rss_mb(api_pid)
    mine = [Follower() for _ in range(followers)]
    gate = asyncio.Semaphore(50)  # connections being opened at once

    async def opened(f: Follower) -> None:
        async with gate:
            task = asyncio.create_task(f.follow(host, port, f"/runs/{run_id}/stream", token))
            await f.started.wait()
        await task

    client_cpu = time.process_time()
    tasks = [asyncio.create_task(opened(f)) for f in mine]
    await asyncio.wait_for(asyncio.gather(*(f.started.wait() for f in mine)), 120)
    statuses: dict[int, int] = {}
    for f in mine:
        statuses[f.status] = statuses.get(f.status, 0) + 1
    print(f"connected: response statuses {statuses}")

    # Every follower on the live path before measuring: a warm-up event each must receive.
    log.append(ref, [NewEvent("PROGRESS_REPORTED", {"warm": 1})])  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while sum(f.events >= 1 for f in mine) < followers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    warm = sum(f.events >= 1 for f in mine)
    warm_s = 60 - (deadline - time.monotonic())
    print(f"warm-up event received by {warm}/{followers} followers ({warm_s:.1f} s)")
    rss_connected = rss_mb(api_pid)
    print(f"API RSS: {rss_before:.1f} MB before, {rss_connected:.1f} MB with followers connected")

    api_cpu = cpu_seconds(api_pid)
    client_cpu = time.process_time()
    count = int(rate * seconds)
    started = time.perf_counter()
    late = 0.0
    for i in range(count):
        wait = started + i / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            late = max(late, -wait)
        log.append(ref, [NewEvent("PROGRESS_REPORTED", {"t": time.time()})])  # type: ignore[attr-defined]
    sent_s = time.perf_counter() - started
    # Let what is in flight arrive (up to 30 s), then close the run's stream.
    expected = count * followers
    deadline = time.monotonic() + 30
    while sum(len(f.delays) for f in mine) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    drained_s = time.perf_counter() - started
    api_cpu = cpu_seconds(api_pid) - api_cpu
    client_cpu = time.process_time() - client_cpu
    rss_end = rss_mb(api_pid)

    delays = array("d")
    for f in mine:
        delays.extend(f.delays)
    received = len(delays)
    print(
        f"appended {count} events in {sent_s:.1f} s (appender at most {late * 1000:.0f} ms "
        f"late); waited {drained_s:.1f} s in all"
    )
    print(f"deliveries: expected {expected}, received {received}")
    if received:
        ordered = sorted(delays)
        p50 = percentile(ordered, 0.5) * 1000
        p99 = percentile(ordered, 0.99) * 1000
        print(
            f"append -> receipt: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms"
        )
        print(
            f"API CPU {api_cpu:.2f} s over {drained_s:.1f} s "
            f"({api_cpu / received * 1e6:.1f} us per delivered event); RSS at end {rss_end:.1f} MB"
        )
    print(f"client CPU {client_cpu:.2f} s over the same window")

    log.append(ref, [NewEvent(RUN_FINISHED, {"done": True})])  # type: ignore[attr-defined]
    done, running = await asyncio.wait(tasks, timeout=30)
    failures = [t.exception() for t in done if t.exception()]
    closed = sum(f.closed for f in mine)
    finished = sum(f.finished for f in mine)
    print(
        f"after RUN_FINISHED: {closed}/{followers} streams closed, {finished} saw RUN_FINISHED, "
        f"{len(running)} still open after 30 s, {len(failures)} failed"
        + (f" (first: {failures[0]!r})" if failures else "")
    )
    for task in running:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="events appended per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.followers + 1000
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))

    from runs.cli.embedded import free_port
    from runs.domain.definitions import Definition
    from runs.domain.runs import RunRef
    from runs.persistence.engine import create_engine
    from runs.services.access import AccessService
    from runs.services.catalog import DefinitionCatalog
    from runs.streams.event_log import RedisEventLog

    logdir = ROOT / ".runs" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    queue = f"bench-stream-{uuid.uuid4().hex[:6]}"
    refs: list[RunRef] = []
    with fresh_database("runs_bench_stream") as url:
        engine = create_engine(url)
        DefinitionCatalog(engine, cache_seconds=0).register([Definition("task:echo", "task")])
        access = AccessService(engine)
        project = access.create_project("bench")
        _, token = access.create_token("bench")
        engine.dispose()
        port = free_port(0)
        env = {
            **os.environ,
            "RUNS_DATABASE_URL": url,
            "RUNS_REDIS_URL": REDIS_URL,
            "RUNS_DEFAULT_QUEUE": queue,  # nothing consumes it: runs stay pending
            "RUNS_LOG_LEVEL": "WARNING",
            "RUNS_HTTP_MAX_CONNECTIONS": str(args.followers + 200),
        }
        api = start(
            [sys.executable, "-m", "runs.cli", "api", "--port", str(port)],
            env,
            logdir / "runs-api-stream.log",
        )
        base = httpx.URL(f"http://127.0.0.1:{port}")
        log = RedisEventLog.from_url(REDIS_URL, ttl_seconds=600)
        try:

            def api_up() -> bool:
                try:
                    return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(api_up, 60, "API")
            headers = {"Authorization": f"Bearer {token}"}
            body = {
                "kind": "task",
                "owner": {"kind": "project", "id": project.id},
                "request": {"target": "task:echo", "config": {}},
            }

            def new_run() -> str:
                created = httpx.post(f"{base}/runs", json=body, headers=headers, timeout=10)
                assert created.status_code == 202, created.text
                run_id: str = created.json()["run"]["run_id"]
                refs.append(RunRef(project.id, run_id))
                return run_id

            for label, followers in (("single follower", 1), ("many followers", args.followers)):
                run_id = new_run()
                asyncio.run(
                    measure(
                        label,
                        base,
                        token,
                        run_id,
                        refs[-1],
                        log,
                        api.pid,
                        followers,
                        args.rate,
                        args.seconds,
                    )
                )
            print(f"\nAPI log: {logdir / 'runs-api-stream.log'}")
        finally:
            stop(api)
            client: redis.Redis = log.client
            keys = [k for k in client.scan_iter(match=f"*{queue}*", count=1000)]
            for ref in refs:
                keys += list(client.scan_iter(match=f"*{ref.key}*", count=1000))
            if keys:
                client.delete(*keys)
            print(f"deleted {len(keys)} Redis keys (queue {queue} and the runs' streams)")
            client.close()


if __name__ == "__main__":
    main()
