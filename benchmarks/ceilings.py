"""The ceiling of each shared component: how many runs a second one PostgreSQL core, one Redis
instance and one RabbitMQ core could serve, from the CPU each spends per run at peak.

Runs `task:echo` runs through POST /runs (wrk) as ``throughput.py`` does, once with the Redis
broker and once with RabbitMQ as the broker (the event log stays on Redis), and reads the CPU
each server's processes spent per run. A component's ceiling is 1 / (its CPU seconds per run):
PostgreSQL per core (it spreads over cores), Redis per instance (one core serves commands),
RabbitMQ per core. The API and the workers scale out by adding processes and machines; these
are what every one of them shares.
Usage: python benchmarks/ceilings.py [--seconds 5] [--connections 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import runs_stack  # noqa: E402

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
SHARED = ("postgres", "redis", "rabbitmq")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5, help="wrk's time per round")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logdir = ROOT / ".runs" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    for broker, env in (("Redis", {}), ("RabbitMQ", {"RUNS_BROKER_URL": AMQP_URL})):
        rates, cpus = [], []
        for _ in range(args.rounds):
            rate, _, cpu = runs_stack(args.seconds, args.connections, logdir, **env)
            rates.append(rate)
            cpus.append(cpu)
        print(f"broker {broker}: {statistics.median(rates):.0f} runs/s (median of rounds)")
        for part in SHARED:
            spent = statistics.median(cpu.get(part, 0.0) for cpu in cpus)
            if spent:
                print(
                    f"  {part:9} {1000 * spent:5.3f} ms CPU a run -> ceiling "
                    f"{1 / spent:8,.0f} runs/s per {'instance' if part == 'redis' else 'core'}"
                )


if __name__ == "__main__":
    main()
