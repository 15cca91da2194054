"""Latency from accept to RUN_STARTED with runs offered at a fixed rate (100/s by default),
beside Procrastinate's deferred -> started at the same rate, in one invocation.

Runs are created through POST /runs by an open-loop async client (one request every 1/rate
seconds, whatever the answers); the latency is read from the server's own clocks afterwards:
the run's ``created_at`` and its RUN_STARTED event. Usage: python benchmarks/latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import procrastinate_peer  # noqa: E402
from benchmarks.stack import RunsSystem, runs_system, wait_for  # noqa: E402


async def offer(system: RunsSystem, rate: float, seconds: float) -> int:
    headers = {"Authorization": f"Bearer {system.token}"}
    count = int(rate * seconds)
    async with httpx.AsyncClient(base_url=system.base, headers=headers) as client:
        started = time.perf_counter()
        sent = []
        for i in range(count):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            sent.append(asyncio.create_task(client.post("/runs", json=system.task_body)))
        answers = await asyncio.gather(*sent)
    assert all(a.status_code == 202 for a in answers), {a.status_code for a in answers}
    return count


def runs_latency(rate: float, seconds: float, logdir: Path) -> tuple[float, float]:
    with runs_system(logdir) as system:
        count = asyncio.run(offer(system, rate, seconds))
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
