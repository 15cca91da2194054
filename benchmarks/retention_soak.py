"""Retention soak: runs created without pause while the workers' sweepers prune them, with a
tiny retention. The runs table (rows and bytes on disk) should stop growing once the first
runs are past the retention period, and stay flat.

One `runs api` and one prefork worker (2 processes) on a fresh PostgreSQL database and the
local Redis (``benchmarks.stack``), with ``RUNS_RETENTION_DAYS`` set to ``--retention-seconds``
and the sweeper running every ``--sweep-seconds``. Task runs of ``task:echo`` are created
through ``POST /runs`` at ``--rate`` a second for ``--seconds``; every ``--sample-seconds`` the
script prints the rows of ``runs`` and ``run_events`` (by status), their size on disk
(``pg_total_relation_size``, indexes and TOAST included) and the run's Redis keys left.
PostgreSQL's (auto)vacuum makes the space of deleted rows reusable: without it the tables
grow whatever retention deletes. The script says whether the server's autovacuum is on; with
``--vacuum-seconds`` it runs ``VACUUM (ANALYZE) runs, run_events`` itself that often, standing
in for autovacuum where the server has it off (a test server, for instance).

Usage: python benchmarks/retention_soak.py [--seconds 90] [--rate 40] [--retention-seconds 10]
       [--vacuum-seconds 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import REDIS_URL, RunsSystem, runs_system  # noqa: E402


@dataclass
class Sample:
    at: float
    created: int
    runs: int
    finished: int
    events: int
    runs_bytes: int
    events_bytes: int
    redis_keys: int


def create_runs(system: RunsSystem, rate: float, stop: threading.Event, created: list[int]) -> None:
    """POST /runs at ``rate`` a second (paced against the clock) until ``stop``."""
    headers = {"Authorization": f"Bearer {system.token}"}
    started = time.monotonic()
    with httpx.Client(base_url=system.base, headers=headers, timeout=10) as client:
        while not stop.is_set():
            due = started + created[0] / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if client.post("/runs", json=system.task_body).status_code == 202:
                created[0] += 1


def vacuum(system: RunsSystem, every: float, stop: threading.Event) -> None:
    """What autovacuum would do on these two tables, every ``every`` seconds."""
    engine = system.engine.execution_options(isolation_level="AUTOCOMMIT")
    while not stop.wait(every):
        with engine.connect() as conn:
            conn.execute(sa.text("VACUUM (ANALYZE) runs, run_events"))


def sample(system: RunsSystem, keys: redis.Redis, at: float, created: int) -> Sample:
    with system.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM runs),"
                " (SELECT count(*) FROM runs WHERE completed_at IS NOT NULL),"
                " (SELECT count(*) FROM run_events),"
                " pg_total_relation_size('runs'), pg_total_relation_size('run_events')"
            )
        ).one()
    match = f"runs:{{{system.project_id}/*"
    left = sum(1 for _ in keys.scan_iter(match=match, count=5000))
    return Sample(at, created, row[0], row[1], row[2], row[3], row[4], left)


def report(samples: list[Sample], retention: float) -> None:
    print(
        f"{'t (s)':>6} {'created':>8} {'runs':>7} {'ended':>7} {'events':>7}"
        f" {'runs MB':>8} {'events MB':>9} {'redis keys':>10}"
    )
    for s in samples:
        print(
            f"{s.at:6.0f} {s.created:8d} {s.runs:7d} {s.finished:7d} {s.events:7d}"
            f" {s.runs_bytes / 1e6:8.2f} {s.events_bytes / 1e6:9.2f} {s.redis_keys:10d}"
        )
    # Steady state: once the first runs are past retention plus a sweep or two.
    steady = [s for s in samples if s.at >= 3 * retention] or samples[-1:]
    rows = [s.runs for s in steady]
    sizes = [s.runs_bytes + s.events_bytes for s in steady]
    print(
        f"\nsteady state (t >= {3 * retention:.0f} s, {len(steady)} samples): runs rows"
        f" min {min(rows)} / median {statistics.median(rows):.0f} / max {max(rows)};"
        f" runs+run_events size min {min(sizes) / 1e6:.2f} / max {max(sizes) / 1e6:.2f} MB"
    )
    last = samples[-1]
    print(
        f"created {last.created} runs in {last.at:.0f} s; {last.created - last.runs} deleted,"
        f" {last.runs} left (about rate x (retention + sweep interval + run time))"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--rate", type=float, default=40)
    parser.add_argument("--retention-seconds", type=float, default=10)
    parser.add_argument("--sweep-seconds", type=float, default=1)
    parser.add_argument("--sample-seconds", type=float, default=5)
    parser.add_argument("--vacuum-seconds", type=float, default=0, help="0: leave it to autovacuum")
    args = parser.parse_args()
    env = {
        "RUNS_RETENTION_DAYS": repr(args.retention_seconds / 86_400),
        "RUNS_SWEEP_INTERVAL_SECONDS": str(args.sweep_seconds),
    }
    with (
        tempfile.TemporaryDirectory() as logdir,
        runs_system(Path(logdir), concurrency=2, **env) as system,
    ):
        with system.engine.connect() as conn:
            autovacuum = conn.execute(sa.text("SHOW autovacuum")).scalar_one()
        by_script = f"every {args.vacuum_seconds:g} s" if args.vacuum_seconds else "never"
        print(
            f"{args.rate:g} runs/s for {args.seconds:g} s, retention {args.retention_seconds:g} s,"
            f" sweep every {args.sweep_seconds:g} s; server autovacuum {autovacuum},"
            f" VACUUM by this script {by_script}\n"
        )
        keys = redis.Redis.from_url(REDIS_URL)
        stop = threading.Event()
        created = [0]
        threads = [threading.Thread(target=create_runs, args=(system, args.rate, stop, created))]
        if args.vacuum_seconds:
            threads.append(
                threading.Thread(target=vacuum, args=(system, args.vacuum_seconds, stop))
            )
        started = time.monotonic()
        for thread in threads:
            thread.start()
        samples: list[Sample] = []
        try:
            while (elapsed := time.monotonic() - started) < args.seconds:
                samples.append(sample(system, keys, elapsed, created[0]))
                time.sleep(max(0.0, args.sample_seconds - (time.monotonic() - started - elapsed)))
            samples.append(sample(system, keys, time.monotonic() - started, created[0]))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            keys.close()
        report(samples, args.retention_seconds)


if __name__ == "__main__":
    main()
