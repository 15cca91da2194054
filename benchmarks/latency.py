"""Latency from accept to RUN_STARTED with runs offered at a fixed rate (100/s by default),
beside Procrastinate's deferred -> started at the same rate, in one invocation.

Runs are created through POST /runs by an open-loop client (one request every 1/rate seconds,
whatever the answers; prebuilt requests over kept-alive connections); the latency is read from
the server's own clocks afterwards: the run's ``created_at`` and its RUN_STARTED event.
Usage: python benchmarks/latency.py [--rate 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from collections import deque
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import procrastinate_peer  # noqa: E402
from benchmarks.stack import RunsSystem, runs_system, wait_for  # noqa: E402


async def offer(system: RunsSystem, rate: float, seconds: float) -> int:
    """POST /runs every 1/rate seconds, whatever the answers (an open loop), over kept-alive
    connections with the request prebuilt: a client cheap enough not to take the CPU it
    measures (its CPU time is reported)."""
    url = httpx.URL(system.base)
    body = json.dumps(system.task_body).encode()
    request = (
        f"POST /runs HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: Bearer {system.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
    statuses: list[int] = []

    async def post() -> None:
        # Kept-alive connections are taken in turn; one the server closed while it was idle
        # never saw the request, which goes again on a new connection.
        for reuse in (bool(idle), False):
            if reuse:
                reader, writer = idle.popleft()
            else:
                reader, writer = await asyncio.open_connection(url.host, url.port)
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if reuse:
                    continue
                raise
            found = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(found.group(1)) if found else 0)
            statuses.append(int(head.split(b" ", 2)[1]))
            idle.append((reader, writer))
            return

    count = int(rate * seconds)
    started = time.perf_counter()
    sent = []
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        sent.append(asyncio.create_task(post()))
    await asyncio.gather(*sent)
    for _, writer in idle:
        writer.close()
    assert set(statuses) == {202}, set(statuses)
    return count


def runs_latency(rate: float, seconds: float, logdir: Path) -> tuple[float, float]:
    with runs_system(logdir) as system:
        before = time.process_time()
        count = asyncio.run(offer(system, rate, seconds))
        client_ms = (time.process_time() - before) * 1000 / count
        print(f"load generator: {client_ms:.2f} ms of CPU per request")
        wait_for(lambda: system.count("completed") >= count + 1, 600, "runs")
        with system.engine.connect() as conn:
            waits = [
                float(row[0])
                for row in conn.execute(
                    sa.text(
                        "SELECT extract(epoch FROM e.created_at - r.created_at) * 1000 "
                        "FROM runs r JOIN run_events e ON e.project_id = r.project_id "
                        "AND e.run_id = r.run_id AND e.event_type = 'RUN_STARTED' "
                        "ORDER BY r.created_at OFFSET 1"
                    )
                )
            ]
    return statistics.median(waits), procrastinate_peer.percentile(waits, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100.0, help="runs offered per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    logdir = ROOT / ".runs" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    p50, p99 = runs_latency(args.rate, args.seconds, logdir)
    print(f"runs: accept -> RUN_STARTED at {args.rate:g}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    p50, p99 = procrastinate_peer.latency(args.rate, args.seconds, logdir)
    print(
        f"Procrastinate: deferred -> started at {args.rate:g}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


if __name__ == "__main__":
    main()
