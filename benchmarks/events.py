"""Event append throughput of one worker process: a task that logs lines as fast as it can.

The attempt's context is the one workers give tasks, over the real Redis event log; events
leave in batches (workers/execution/outbox.py). Prints events per second from the first line to the
last one appended, and checks every line arrived in order.
Usage: python benchmarks/events.py [--lines 200000]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import REDIS_URL  # noqa: E402
from runs.domain.runs import RunRef  # noqa: E402
from runs.streams.event_log import RedisEventLog  # noqa: E402
from workers.execution.context import TaskContext  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    log = RedisEventLog.from_url(REDIS_URL, ttl_seconds=600)
    rates = []
    for _ in range(args.rounds):
        ref = RunRef(str(uuid.uuid4()), f"run_{uuid.uuid4()}")
        cancelled = threading.Event()

        def publish(
            events: object, batch: int, ref: RunRef = ref, flag: threading.Event = cancelled
        ) -> None:
            if not log.append(ref, events):  # type: ignore[arg-type]
                flag.set()

        ctx = TaskContext(
            run_id=ref.run_id,
            project_id=ref.project_id,
            target="task:bench/log-heavy",
            attempt=1,
            config={},
            input=None,
            publish=publish,
            max_log_bytes=None,
        )
        log.open(ref, "w1", [])
        started = time.perf_counter()
        for i in range(args.lines):
            ctx.log_line(f"line {i}")
        ctx.flush_events()
        elapsed = time.perf_counter() - started
        stored = log.read(ref, after=args.lines - 1, limit=10)
        assert [e.payload["logs"] for e in stored] == [f"line {args.lines - 1}"], stored
        rates.append(args.lines / elapsed)
        log.client.delete(f"runs:{{{ref.key}}}:events", f"runs:{{{ref.key}}}:meta")
        print(f"{args.lines} log lines in {elapsed:.2f} s: {rates[-1]:,.0f} events/s", flush=True)
    print(f"median: {sorted(rates)[len(rates) // 2]:,.0f} events/s per worker process")


if __name__ == "__main__":
    main()
