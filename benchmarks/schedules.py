"""Schedules: how late `runs scheduler` fires occurrences, and whether several schedulers at
once fire each occurrence exactly once.

Each phase runs on a fresh PostgreSQL database (created, migrated and dropped here) with real
`runs scheduler` processes on the local Redis; their jobs go to a throwaway queue that nothing
consumes (deleted at the end), so every run stays pending.

1. Lag: one scheduler, ``--lag-schedules`` (10,000) active interval schedules of 60 s whose
   first occurrences are spread uniformly over a minute (about 167 a second; bulk-inserted as
   copies of one schedule made by ``ScheduleService.create``, each with its own id, name,
   first occurrence and matching ``created_at``), for ``--lag-seconds``. The lag of an
   occurrence is its run's ``created_at`` minus the firing's ``scheduled_for``; beside it, the
   lag until the job is in Redis, read from the queue's length sampled every 20 ms (the n-th
   job sent against the n-th occurrence due). Goal: p99 under 1 s.
2. Exactly once: ``--schedulers`` (3) schedulers at once, ``--once-schedules`` (200) interval
   schedules of 1 s (made by ``ScheduleService.create``), for ``--once-seconds``. After
   SIGTERM, every occurrence from each schedule's first to the last one fired (less
   ``--edge-seconds``) is counted: runs per occurrence through ``schedule_firings`` and
   through ``runs.schedule_id``. Each scheduler's share comes from its "fired N runs" log lines.

Reports the CPU seconds of each scheduler process (start-up, then the phase), and of all
PostgreSQL and Redis processes during the phase (both servers are shared with the machine).
Usage: python benchmarks/schedules.py [--lag-seconds 90] [--once-seconds 60] [--phase all]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import REDIS_URL, fresh_database, start, wait_for  # noqa: E402
from runs.domain.definitions import Definition  # noqa: E402
from runs.domain.projects import Project  # noqa: E402
from runs.domain.schedules import new_schedule_id  # noqa: E402
from runs.persistence import tables  # noqa: E402
from runs.services.access import AccessService  # noqa: E402
from runs.services.catalog import DefinitionCatalog  # noqa: E402
from runs.settings import Settings  # noqa: E402
from runs.wiring import Wired, wire  # noqa: E402

TARGET = {"kind": "task", "id": "echo"}
TICKS = os.sysconf("SC_CLK_TCK")


# -- processes and their CPU ----------------------------------------------------------------


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_of(pid: int) -> float | None:
    """CPU seconds (user + system) of one live process so far."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def server_cpu(name: str) -> float:
    """CPU seconds so far of every process named ``name`` (a server and its children), with
    what its reaped children spent (counted in their parent's cutime and cstime)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm != name:
            continue
        fields = _stat(entry.name)
        if fields is None:
            continue
        total += sum(int(v) for v in fields[11:13]) / TICKS
        if fields[1] == "1" or comm != _comm(int(fields[1])):  # the server's main process
            total += sum(int(v) for v in fields[13:15]) / TICKS
    return total


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Scheduler:
    """One `runs scheduler` subprocess, its log and its CPU."""

    def __init__(self, label: str, env: dict[str, str], log: Path) -> None:
        self.label = label
        self.log = log
        argv = [sys.executable, "-m", "runs.cli", "scheduler"]
        self.process = start(argv, env, self.log)
        self.cpu_ready = self.cpu_start = self.cpu_end = 0.0
        self.started = self.ended = 0.0

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise SystemExit(f"{self.label} exited with {self.process.returncode}; see {self.log}")
        return "scheduler started" in self.log.read_text(errors="replace")

    def mark_start(self) -> None:
        self.cpu_ready = self.cpu_start = cpu_of(self.process.pid) or 0.0
        self.started = time.monotonic()

    def mark_end(self) -> None:
        self.cpu_end = cpu_of(self.process.pid) or self.cpu_start
        self.ended = time.monotonic()

    @property
    def phase_cpu(self) -> float:
        return self.cpu_end - self.cpu_start

    def fired(self) -> int:
        """Runs this scheduler says it fired (its "fired N runs" log lines)."""
        text = self.log.read_text(errors="replace")
        return sum(int(n) for n in re.findall(r"fired (\d+) runs", text))

    def troubles(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if re.search(r"WARNING|ERROR|CRITICAL|Traceback", line)]


def start_schedulers(n: int, env: dict[str, str], logdir: Path, phase: str) -> list[Scheduler]:
    schedulers = [
        Scheduler(f"scheduler-{i + 1}", env, logdir / f"{phase}-scheduler-{i + 1}.log")
        for i in range(n)
    ]
    for scheduler in schedulers:
        wait_for(scheduler.ready, 90, f"{scheduler.label} to start", interval=0.1)
    for scheduler in schedulers:
        scheduler.mark_start()
    return schedulers


def stop_schedulers(schedulers: Sequence[Scheduler]) -> datetime:
    """SIGTERM to all at once; returns when it was sent."""
    for scheduler in schedulers:
        scheduler.mark_end()
    stopped_at = datetime.now(UTC)
    for scheduler in schedulers:
        scheduler.process.terminate()
    for scheduler in schedulers:
        try:
            scheduler.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"  {scheduler.label} ignored SIGTERM for 30 s; killed")
            scheduler.process.kill()
            scheduler.process.wait()
    return stopped_at


class ServerCPU:
    def __init__(self) -> None:
        self.start = {
            "postgres": server_cpu("postgres"),
            "redis-server": server_cpu("redis-server"),
        }

    def report(self, runs: int) -> None:
        for name, label in (("postgres", "PostgreSQL"), ("redis-server", "Redis")):
            spent = server_cpu(name) - self.start[name]
            print(
                f"  {label} (all its processes, shared server): {spent:.2f} CPU s"
                f" ({per_run(spent, runs)})"
            )


def report_cpu(schedulers: Sequence[Scheduler], created: int) -> None:
    """``created``: the runs all of them created (the database's count); each one's share is
    read from its log, which a killed scheduler did not finish."""
    for s in schedulers:
        seconds = s.ended - s.started
        fired = created if len(schedulers) == 1 else s.fired()
        print(
            f"  {s.label} (pid {s.process.pid}, exit {s.process.returncode}): start-up "
            f"{s.cpu_ready:.2f} CPU s; this phase {s.phase_cpu:.2f} CPU s over {seconds:.0f} s "
            f"({100 * s.phase_cpu / seconds:.1f} % of a core; {fired} runs fired, "
            f"{per_run(s.phase_cpu, fired)})"
        )


def per_run(cpu: float, runs: int) -> str:
    return f"{1000 * cpu / runs:.2f} ms a run" if runs else "no runs"


# -- figures --------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "count 0"
    ordered = sorted(values)
    return (
        f"count {len(ordered)}, p50 {percentile(ordered, 0.5):.1f} ms, "
        f"p99 {percentile(ordered, 0.99):.1f} ms, max {ordered[-1]:.1f} ms, "
        f"min {ordered[0]:.1f} ms"
    )


def occurrences(first: datetime, every: int, until: datetime) -> list[datetime]:
    found = []
    moment = first
    while moment <= until:
        found.append(moment)
        moment += timedelta(seconds=every)
    return found


def off_grid(found: Sequence[Any], first: dict[str, datetime], every: int) -> int:
    """Firings not at one of their schedule's occurrences."""
    return sum(
        1
        for f in found
        if f.scheduled_for < first[f.schedule_id]
        or (f.scheduled_for - first[f.schedule_id]) % timedelta(seconds=every) != timedelta(0)
    )


class QueueSampler(threading.Thread):
    """The length of a Redis list every ``interval`` seconds, with the wall-clock time."""

    def __init__(self, client: redis.Redis, key: str, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.client, self.key, self.interval = client, key, interval
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append((time.time(), int(self.client.llen(self.key))))
            self.halt.wait(self.interval)


def enqueue_lags(due: Sequence[datetime], samples: Sequence[tuple[float, int]]) -> list[float]:
    """The n-th job in the queue against the n-th occurrence due (both in time order): the
    horizontal distance between the two cumulative curves, in ms."""
    lags = []
    k = 0
    for n, moment in enumerate(sorted(due), start=1):
        while k < len(samples) and samples[k][1] < n:
            k += 1
        if k == len(samples):
            break
        lags.append(1000 * (samples[k][0] - moment.timestamp()))
    return lags


# -- the database -------------------------------------------------------------------------


def prepare(url: str, queue: str) -> tuple[Wired, Project]:
    settings = Settings(
        database_url=url, redis_url=REDIS_URL, broker_url=REDIS_URL, default_queue=queue
    )
    wired = wire(settings, pool_size=2, auth_cache_seconds=0)
    DefinitionCatalog(wired.engine, cache_seconds=0).register(
        [Definition(target="task:echo", kind="task")]
    )
    project = AccessService(wired.engine).create_project("bench")
    return wired, project


def db_counters(engine: sa.Engine) -> Counter[str]:
    """Transactions in this database, and scans of the index the scheduler finds due schedules
    and the earliest one by (two or more a scheduler's round): how often schedulers looked."""
    with engine.connect() as conn:
        found: Counter[str] = Counter()
        found["transactions"] = int(
            conn.execute(
                sa.text(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            ).scalar_one()
        )
        found["due index scans"] = int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes "
                    "WHERE indexrelname = 'ix_schedules_due'"
                )
            ).scalar_one()
        )
    return found


def report_counters(
    engine: sa.Engine, before: Counter[str], schedulers: Sequence[Scheduler]
) -> None:
    time.sleep(1.0)  # the schedulers' backends report their statistics as they end
    spent = db_counters(engine)
    spent.subtract(before)
    seconds = sum(s.ended - s.started for s in schedulers)
    print(
        "  PostgreSQL statistics of the phase's database: "
        + ", ".join(f"{k} {v} ({v / seconds:.1f} a scheduler-second)" for k, v in spent.items())
    )


def firings(engine: sa.Engine) -> list[Any]:
    f, r = tables.schedule_firings, tables.runs
    query = sa.select(
        f.c.schedule_id,
        f.c.scheduled_for,
        f.c.outcome,
        f.c.run_id,
        f.c.created_at,
        r.c.created_at.label("run_created_at"),
        r.c.schedule_id.label("run_schedule_id"),
    ).select_from(
        f.outerjoin(r, sa.and_(r.c.project_id == f.c.project_id, r.c.run_id == f.c.run_id))
    )
    with engine.connect() as conn:
        return list(conn.execute(query))


def scheduled_runs(engine: sa.Engine) -> list[Any]:
    r = tables.runs
    query = sa.select(r.c.run_id, r.c.schedule_id, r.c.status).where(r.c.schedule_id.is_not(None))
    with engine.connect() as conn:
        return list(conn.execute(query))


def run_counts(engine: sa.Engine) -> dict[str, int]:
    s = tables.schedules
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(s.c.id, s.c.run_count)).all())


# -- phase 1: lag ---------------------------------------------------------------------------


def lag_phase(args: argparse.Namespace, env: dict[str, str], logdir: Path, queue: str) -> None:
    n, every = args.lag_schedules, 60
    print(
        f"\n== Lag: 1 scheduler, {n} interval schedules of {every} s, "
        f"first occurrences over {every} s, {args.lag_seconds:.0f} s =="
    )
    with fresh_database("runs_bench_sched") as url:
        wired, project = prepare(url, queue)
        client = redis.Redis.from_url(REDIS_URL)
        sampler = QueueSampler(client, queue)
        schedulers: list[Scheduler] = []
        try:
            schedulers = start_schedulers(1, {**env, "RUNS_DATABASE_URL": url}, logdir, "lag")
            servers = ServerCPU()
            counters = db_counters(wired.engine)
            sampler.start()
            # One schedule through the service, as the API makes it; the rest are its copies.
            template = wired.schedules.create(
                project, {"name": "lag-template", "target": TARGET, "interval_seconds": every}
            )
            s = tables.schedules
            with wired.engine.begin() as conn:
                row = dict(conn.execute(s.select().where(s.c.id == template.id)).mappings().one())
                conn.execute(s.delete().where(s.c.id == template.id))
            now = datetime.now(UTC)
            base = now.replace(microsecond=0) + timedelta(seconds=args.lead_seconds)
            first: dict[str, datetime] = {}
            rows = []
            for i in range(n):
                at = base + timedelta(seconds=i * every // n)  # on the grid: whole seconds
                # create() writes created_at = now and next_run_at = whole(now) + interval.
                made_at = at - timedelta(seconds=every) + timedelta(microseconds=(i * 7919) % 10**6)
                sid = new_schedule_id()
                first[sid] = at
                rows.append(
                    row
                    | {
                        "id": sid,
                        "name": f"lag-{i}",
                        "next_run_at": at,
                        "created_at": made_at,
                        "updated_at": made_at,
                    }
                )
            inserted = time.monotonic()
            with wired.engine.begin() as conn:
                for chunk in range(0, n, 1000):
                    conn.execute(s.insert(), rows[chunk : chunk + 1000])
            inserted = time.monotonic() - inserted
            margin = (base - datetime.now(UTC)).total_seconds()
            print(
                f"  inserted {n} schedules in {inserted:.1f} s; the first is due "
                f"{margin:.1f} s later"
            )
            if margin < 0:
                print("  WARNING: the first occurrences were due before the insert ended")
            end = base + timedelta(seconds=args.lag_seconds)
            time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()))
            stopped_at = stop_schedulers(schedulers)
            sampler.halt.set()
            sampler.join()

            found = firings(wired.engine)
            created = [f for f in found if f.outcome == "created"]
            lags = [
                1000 * (f.run_created_at - f.scheduled_for).total_seconds()
                for f in created
                if f.run_created_at is not None
            ]
            passes = [1000 * (f.created_at - f.scheduled_for).total_seconds() for f in created]
            print(f"  lag, occurrence -> run created_at: {spread(lags)}")
            print(f"  lag, occurrence -> its pass began (firing created_at): {spread(passes)}")
            print(
                f"  lag, occurrence -> job in Redis (queue length, 20 ms samples): "
                f"{spread(enqueue_lags([f.scheduled_for for f in created], sampler.samples))}"
            )
            by_window: dict[int, list[float]] = defaultdict(list)
            for f in created:
                if f.run_created_at is not None:
                    lag = 1000 * (f.run_created_at - f.scheduled_for).total_seconds()
                    by_window[int((f.scheduled_for - base).total_seconds() // 15)].append(lag)
            for window in sorted(by_window):
                values = sorted(by_window[window])
                print(
                    f"    occurrences due {15 * window:3d}-{15 * window + 15:3d} s: "
                    f"{len(values):5d}, p50 {percentile(values, 0.5):7.1f} ms, "
                    f"p99 {percentile(values, 0.99):7.1f} ms, max {values[-1]:7.1f} ms"
                )
            # What should have fired: every occurrence due up to 2 s before the stop.
            until = stopped_at - timedelta(seconds=args.edge_seconds)
            expected = {
                (sid, t) for sid, at in first.items() for t in occurrences(at, every, until)
            }
            fired = {(f.schedule_id, f.scheduled_for) for f in found}
            outcomes = Counter(f.outcome for f in found)
            print(
                f"  occurrences due until {args.edge_seconds:g} s before the stop: "
                f"{len(expected)}; fired {len(expected & fired)}, not fired "
                f"{len(expected - fired)}; firings {dict(outcomes)}, of them later than that "
                f"{sum(1 for f in found if f.scheduled_for > until)}, off the grid "
                f"{off_grid(found, first, every)}; firings whose run is missing "
                f"{sum(1 for f in created if f.run_created_at is None)}"
            )
            report_cpu(schedulers, len(created))
            servers.report(len(created))
            report_counters(wired.engine, counters, schedulers)
            for scheduler in schedulers:
                for line in scheduler.troubles()[:10]:
                    print(f"  {scheduler.label} log: {line}")
        finally:
            sampler.halt.set()
            for scheduler in schedulers:
                if scheduler.process.poll() is None:
                    scheduler.process.kill()
                    scheduler.process.wait()
            wired.close()


# -- phase 2: exactly once ------------------------------------------------------------------


def once_phase(args: argparse.Namespace, env: dict[str, str], logdir: Path, queue: str) -> None:
    n, every = args.once_schedules, 1
    print(
        f"\n== Exactly once: {args.schedulers} schedulers, {n} interval schedules of "
        f"{every} s, {args.once_seconds:.0f} s =="
    )
    with fresh_database("runs_bench_sched") as url:
        wired, project = prepare(url, queue)
        schedulers: list[Scheduler] = []
        try:
            schedulers = start_schedulers(
                args.schedulers, {**env, "RUNS_DATABASE_URL": url}, logdir, "once"
            )
            servers = ServerCPU()
            counters = db_counters(wired.engine)
            began = time.monotonic()
            first: dict[str, datetime] = {}
            for i in range(n):
                made = wired.schedules.create(
                    project, {"name": f"once-{i}", "target": TARGET, "interval_seconds": every}
                )
                assert made.next_run_at is not None
                first[made.id] = made.next_run_at
            print(
                f"  created {n} schedules through ScheduleService in "
                f"{time.monotonic() - began:.1f} s; first occurrences "
                f"{min(first.values()):%H:%M:%S} to {max(first.values()):%H:%M:%S}"
            )
            time.sleep(max(0.0, args.once_seconds - (time.monotonic() - began)))
            stopped_at = stop_schedulers(schedulers)

            found = firings(wired.engine)
            runs = scheduled_runs(wired.engine)
            counts = run_counts(wired.engine)
            created = [f for f in found if f.outcome == "created"]
            if not found:
                raise SystemExit("no occurrence fired at all; see the scheduler logs")
            last = max(f.scheduled_for for f in found)
            until = min(last, stopped_at) - timedelta(seconds=args.edge_seconds)
            expected = {
                (sid, t) for sid, at in first.items() for t in occurrences(at, every, until)
            }
            per_occurrence = Counter((f.schedule_id, f.scheduled_for) for f in created)
            # Runs per occurrence through the runs table: each run of a schedule, matched to
            # the occurrence whose firing names it.
            occurrence_of = {f.run_id: (f.schedule_id, f.scheduled_for) for f in created}
            via_runs = Counter(occurrence_of[r.run_id] for r in runs if r.run_id in occurrence_of)
            orphans = [r for r in runs if r.run_id not in occurrence_of]
            firing_per_schedule = Counter(f.schedule_id for f in created)
            runs_per_schedule = Counter(r.schedule_id for r in runs)
            after = (last - stopped_at).total_seconds()
            print(
                f"  the last occurrence fired was due {abs(after):.2f} s "
                f"{'after' if after > 0 else 'before'} the SIGTERM"
                f"{' (fired after the SIGTERM)' if after > 0 else ''}; window: each schedule's "
                f"first occurrence to {until:%H:%M:%S} ({args.edge_seconds:g} s before the "
                "earlier of the two)"
            )
            for label, tally in (
                ("schedule_firings (outcome created)", per_occurrence),
                ("runs (runs.schedule_id, via the firing's run_id)", via_runs),
            ):
                ones = sum(1 for key in expected if tally[key] == 1)
                gaps = sorted(key for key in expected if tally[key] == 0)
                dupes = sum(1 for key in expected if tally[key] > 1)
                print(
                    f"  occurrences expected {len(expected)}, by {label}: exactly 1 run "
                    f"{ones}, 0 runs (gaps) {len(gaps)}, more than 1 (duplicates) {dupes}"
                )
                for sid, moment in gaps[:5]:
                    print(f"    gap: {sid} at {moment:%H:%M:%S}")
            print(
                f"  firings {dict(Counter(f.outcome for f in found))}, off the grid "
                f"{off_grid(found, first, every)}; runs of schedules {len(runs)}, created "
                f"firings {len(created)}, runs no firing names (orphans) {len(orphans)}, firings "
                f"whose run is missing {sum(1 for f in created if f.run_created_at is None)}"
            )
            mismatched = [
                sid
                for sid in first
                if not (runs_per_schedule[sid] == firing_per_schedule[sid] == counts[sid])
            ]
            print(
                f"  schedules whose runs, created firings and run_count differ: "
                f"{len(mismatched)} of {len(first)}"
            )
            for sid in mismatched[:5]:
                print(
                    f"    {sid}: runs {runs_per_schedule[sid]}, firings "
                    f"{firing_per_schedule[sid]}, run_count {counts[sid]}"
                )
            lags = [
                1000 * (f.run_created_at - f.scheduled_for).total_seconds()
                for f in created
                if f.run_created_at is not None
            ]
            print(f"  lag, occurrence -> run created_at: {spread(lags)}")
            shares = {s.label: s.fired() for s in schedulers}
            total = sum(shares.values()) or 1
            print(
                "  share of runs fired (each scheduler's 'fired N runs' log lines): "
                + ", ".join(f"{k} {v} ({100 * v / total:.0f} %)" for k, v in shares.items())
            )
            report_cpu(schedulers, len(created))
            servers.report(len(created))
            report_counters(wired.engine, counters, schedulers)
            for scheduler in schedulers:
                for line in scheduler.troubles()[:10]:
                    print(f"  {scheduler.label} log: {line}")
        finally:
            for scheduler in schedulers:
                if scheduler.process.poll() is None:
                    scheduler.process.kill()
                    scheduler.process.wait()
            wired.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=["all", "lag", "once"], default="all")
    parser.add_argument("--lag-schedules", type=int, default=10_000)
    parser.add_argument("--lag-seconds", type=float, default=90.0)
    parser.add_argument(
        "--lead-seconds",
        type=int,
        default=5,
        help="from the insert of the lag phase's schedules to the first due",
    )
    parser.add_argument("--schedulers", type=int, default=3)
    parser.add_argument("--once-schedules", type=int, default=200)
    parser.add_argument("--once-seconds", type=float, default=60.0)
    parser.add_argument(
        "--edge-seconds",
        type=float,
        default=2.0,
        help="occurrences this close to the end are left out of the counts",
    )
    args = parser.parse_args()

    queue = f"bench-schedules-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "RUNS_REDIS_URL": REDIS_URL,
        "RUNS_BROKER_URL": REDIS_URL,
        "RUNS_DEFAULT_QUEUE": queue,
        "RUNS_LOG_LEVEL": "INFO",
    }
    client = redis.Redis.from_url(REDIS_URL)
    logdir = Path(tempfile.mkdtemp(prefix="bench-schedules-"))
    try:
        print(f"queue {queue} (nothing consumes it); scheduler logs in {logdir}")
        if args.phase in ("all", "lag"):
            lag_phase(args, env, logdir, queue)
        if args.phase in ("all", "once"):
            once_phase(args, env, logdir, queue)
    finally:
        keys = {queue, *(k.decode() for k in client.scan_iter(match=f"*{queue}*"))}
        removed = client.delete(*keys)
        print(f"\nremoved {removed} Redis keys of the queue ({', '.join(sorted(keys))})")


if __name__ == "__main__":
    main()
