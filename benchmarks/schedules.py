"""Schedules: how late `runs scheduler` fires occurrences, and whether several schedulers at
once fire each occurrence exactly once.

Each phase runs on a fresh PostgreSQL database (created, migrated and dropped here) with real
`runs scheduler` processes on the local Redis; their jobs go to a throwaway queue that nothing
consumes (deleted at the end), so every run stays pending, except in the burst phase, whose
queue a real worker consumes.

1. Lag: one scheduler, ``--lag-schedules`` (10,000) active interval schedules of 60 s whose
   first occurrences are spread uniformly over a minute (about 167 a second; bulk-inserted as
   copies of one schedule made by ``ScheduleService.create``, each with its own id, name,
   first occurrence and matching ``created_at``), for ``--lag-seconds``. The lag of an
   occurrence is its run's ``created_at`` minus the firing's ``scheduled_for``; beside it, the
   lag until its job is in Redis, read from the queue sampled every 20 ms (the n-th run whose
   job is queued against the n-th occurrence due; a job carries one run or a group's runs).
   Goal: p99 under 1 s.
2. Exactly once: ``--schedulers`` (3) schedulers at once, ``--once-schedules`` (200) interval
   schedules of 1 s (made by ``ScheduleService.create``), for ``--once-seconds``. After
   SIGTERM, every occurrence from each schedule's first to the last one fired (less
   ``--edge-seconds``) is counted: runs per occurrence through ``schedule_firings`` and
   through ``runs.schedule_id``. Each scheduler's share comes from its "fired N runs" log lines.
3. Burst: one scheduler and one `runs worker` (``--burst-concurrency``, 2, pool processes,
   default definitions) on a queue of its own; ``--burst-schedules`` (10,000) interval
   schedules of an hour whose next occurrence is the same whole second, ``--lead-seconds``
   after the insert (bulk-inserted as the lag phase does). Reported, from the server's clocks:
   when the last run was created and when the last one started (``started_at``) and ended,
   after the due second (goal: all started within 5 s), and started_at - scheduled_for and
   created_at - scheduled_for (p50/p99), with the runs handed off between pool processes.
   The phase ends when all ended, ``--burst-timeout`` (180) seconds after the due second, or
   once nothing moved for 30 s.

Reports the CPU seconds of each scheduler process (start-up, then the phase), of the worker
(its main and pool processes, burst phase), and of all PostgreSQL and Redis processes during
the phase (both servers are shared with the machine).
Usage: python benchmarks/schedules.py [--lag-seconds 90] [--once-seconds 60]
    [--burst-schedules 10000] [--burst-concurrency 2] [--burst-timeout 180]
    [--phase all|lag|once|burst]
"""

from __future__ import annotations

import argparse
import base64
import json
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
from typing import Any, cast

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import REDIS_URL, fresh_database, start, wait_for  # noqa: E402
from runs.domain.definitions import Definition  # noqa: E402
from runs.domain.projects import Project  # noqa: E402
from runs.domain.runs import RunKind, RunRequest  # noqa: E402
from runs.domain.schedules import new_schedule_id  # noqa: E402
from runs.messaging.dispatch import GROUP_ARGUMENT  # noqa: E402
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


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of a process, its live children and its reaped ones."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    total = sum(int(v) for v in fields[11:15]) / TICKS
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (child := _stat(entry.name)) and child[1] == str(pid):
            total += (int(child[11]) + int(child[12])) / TICKS
    return total


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
    """The runs whose jobs are in an unconsumed queue (a Redis list kombu pushes each message
    onto the head of), every ``interval`` seconds, with the wall-clock time. A job carries one
    run, or the runs of a group (runs created together travel in one job): the messages that
    arrived since the last sample are read and their runs counted."""

    def __init__(self, client: redis.Redis, key: str, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.client, self.key, self.interval = client, key, interval
        self.samples: list[tuple[float, int]] = []
        self.jobs = 0
        self.halt = threading.Event()

    def run(self) -> None:
        runs = 0
        while not self.halt.is_set():
            at, length = time.time(), int(self.client.llen(self.key))
            if length > self.jobs:
                new = cast(list[bytes], self.client.lrange(self.key, 0, length - self.jobs - 1))
                runs += sum(runs_of(message) for message in new)
                self.jobs = length
            self.samples.append((at, runs))
            self.halt.wait(self.interval)


def runs_of(message: bytes) -> int:
    """The runs of one queued Celery message: its group's (the ``group`` keyword), else 1."""
    envelope = json.loads(message)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    _, kwargs, _ = json.loads(body)
    return len(kwargs.get(GROUP_ARGUMENT) or ()) or 1


def enqueue_lags(due: Sequence[datetime], samples: Sequence[tuple[float, int]]) -> list[float]:
    """The n-th run in the queue against the n-th occurrence due (both in time order): the
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


def template_row(wired: Wired, project: Project, name: str, every: int) -> dict[str, Any]:
    """The row of an interval schedule made through the service, as the API makes it (then
    deleted): what the bulk-inserted schedules are copies of."""
    template = wired.schedules.create(
        project, {"name": name, "target": TARGET, "interval_seconds": every}
    )
    s = tables.schedules
    with wired.engine.begin() as conn:
        row = dict(conn.execute(s.select().where(s.c.id == template.id)).mappings().one())
        conn.execute(s.delete().where(s.c.id == template.id))
    return row


def insert_schedules(engine: sa.Engine, rows: Sequence[dict[str, Any]], first: datetime) -> None:
    """Insert schedule rows, 1,000 a statement, in one transaction; says how long before
    ``first`` (the earliest occurrence) it ended."""
    inserted = time.monotonic()
    with engine.begin() as conn:
        for chunk in range(0, len(rows), 1000):
            conn.execute(tables.schedules.insert(), rows[chunk : chunk + 1000])
    inserted = time.monotonic() - inserted
    margin = (first - datetime.now(UTC)).total_seconds()
    print(
        f"  inserted {len(rows)} schedules in {inserted:.1f} s; the first is due "
        f"{margin:.1f} s later"
    )
    if margin < 0:
        print("  WARNING: the first occurrences were due before the insert ended")


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
            row = template_row(wired, project, "lag-template", every)
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
            insert_schedules(wired.engine, rows, base)
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
                f"  lag, occurrence -> its job in Redis (runs of the queued jobs, 20 ms "
                "samples): "
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


# -- phase 3: a burst, consumed -------------------------------------------------------------


class Worker:
    """One `runs worker` subprocess (Celery's main process: `runs worker` execs it) and the CPU
    of its process tree."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int) -> None:
        self.log = log
        argv = [sys.executable, "-m", "runs.cli", "worker", "--concurrency", str(concurrency)]
        self.process = start(argv, env, log)
        self.cpu_start = self.cpu_end = 0.0

    def mark_start(self) -> None:
        self.cpu_start = tree_cpu(self.process.pid)

    def mark_end(self) -> None:
        self.cpu_end = tree_cpu(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print("  the worker ignored SIGTERM for 30 s; killed")
            self.process.kill()
            self.process.wait()

    def troubles(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if re.search(r"ERROR|CRITICAL|Traceback", line)]


def warm_up(wired: Wired, project: Project, worker: Worker, runs: int) -> None:
    """Runs created one at a time (each its own job) until the worker has completed them all:
    it is up, and its pool processes have run an attempt."""
    request = RunRequest(
        kind=RunKind.TASK, owner_kind="project", owner_id=project.id, target="task:echo"
    )
    made = [wired.runs.create(project, request)[0].ref for _ in range(runs)]

    def done() -> bool:
        if worker.process.poll() is not None:
            raise SystemExit(
                f"the worker exited with {worker.process.returncode}; see {worker.log}"
            )
        return all(
            (run := wired.runs.load(ref)) is not None and run.status.is_terminal for ref in made
        )

    wait_for(done, 90, "the worker's warm-up runs", interval=0.1)


def burst_progress(engine: sa.Engine) -> tuple[int, int, int]:
    """Runs of schedules: created, started, ended."""
    r = tables.runs
    query = sa.select(
        sa.func.count(),
        sa.func.count(r.c.started_at),
        sa.func.count().filter(r.c.status.in_(["completed", "failed", "cancelled"])),
    ).where(r.c.schedule_id.is_not(None))
    with engine.connect() as conn:
        created, started, ended = conn.execute(query).one()
    return int(created), int(started), int(ended)


def burst_runs(engine: sa.Engine) -> list[Any]:
    f, r = tables.schedule_firings, tables.runs
    query = sa.select(
        f.c.scheduled_for,
        f.c.outcome,
        r.c.status,
        r.c.created_at,
        r.c.started_at,
        r.c.completed_at,
        r.c.available_at,
    ).select_from(
        f.outerjoin(r, sa.and_(r.c.project_id == f.c.project_id, r.c.run_id == f.c.run_id))
    )
    with engine.connect() as conn:
        return list(conn.execute(query))


def burst_phase(args: argparse.Namespace, env: dict[str, str], logdir: Path, queue: str) -> None:
    n, every, goal = args.burst_schedules, 3600, 5.0
    print(
        f"\n== Burst: 1 scheduler, 1 worker of {args.burst_concurrency} pool processes, {n} "
        f"interval schedules of {every} s due in the same second =="
    )
    queue = f"{queue}-burst"  # consumed, unlike the other phases' queue
    with fresh_database("runs_bench_sched") as url:
        wired, project = prepare(url, queue)
        phase_env = {**env, "RUNS_DATABASE_URL": url, "RUNS_DEFAULT_QUEUE": queue}
        # The worker logs warnings only (a line a run at INFO would cost it CPU).
        worker = Worker(
            {**phase_env, "RUNS_LOG_LEVEL": "WARNING"},
            logdir / "burst-worker.log",
            args.burst_concurrency,
        )
        schedulers: list[Scheduler] = []
        try:
            warm_up(wired, project, worker, 2 * args.burst_concurrency)
            schedulers = start_schedulers(1, phase_env, logdir, "burst")
            servers = ServerCPU()
            worker.mark_start()
            row = template_row(wired, project, "burst-template", every)
            due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=args.lead_seconds)
            rows = []
            for i in range(n):
                # create() writes created_at = now and next_run_at = whole(now) + interval.
                made_at = (
                    due - timedelta(seconds=every) + timedelta(microseconds=(i * 7919) % 10**6)
                )
                rows.append(
                    row
                    | {
                        "id": new_schedule_id(),
                        "name": f"burst-{i}",
                        "next_run_at": due,
                        "created_at": made_at,
                        "updated_at": made_at,
                    }
                )
            insert_schedules(wired.engine, rows, due)
            time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
            # Until all ended; or the time is up, or nothing moved for 30 s.
            deadline = time.monotonic() + args.burst_timeout
            progress, moved = (0, 0, 0), time.monotonic()
            while progress[2] < n and time.monotonic() < min(deadline, moved + 30):
                time.sleep(0.5)
                now_at = burst_progress(wired.engine)
                if now_at != progress:
                    progress, moved = now_at, time.monotonic()
            worker.mark_end()
            stop_schedulers(schedulers)
            if progress[2] < n:
                print(
                    f"  WARNING: stopped waiting (the time was up or nothing moved for 30 s); "
                    f"of {n} runs "
                    f"{progress[0]} were created, {progress[1]} started, {progress[2]} ended"
                )

            found = burst_runs(wired.engine)
            made = [f for f in found if f.created_at is not None]
            began = [f for f in made if f.started_at is not None]
            ended = [f for f in made if f.completed_at is not None]

            def last(values: list[datetime]) -> str:
                return f"{(max(values) - due).total_seconds():.2f} s" if values else "-"

            def after(moment: str) -> list[float]:
                return [
                    1000 * (getattr(f, moment) - f.scheduled_for).total_seconds()
                    for f in made
                    if getattr(f, moment) is not None
                ]

            print(
                f"  firings {dict(Counter(f.outcome for f in found))}; runs created "
                f"{len(made)}, started {len(began)}, ended {len(ended)} "
                f"({dict(Counter(f.status for f in made))})"
            )
            print(
                "  after the due second, the last run: created "
                f"{last([f.created_at for f in made])}, started "
                f"{last([f.started_at for f in began])}, ended "
                f"{last([f.completed_at for f in ended])}"
            )
            latest = max((f.started_at for f in began), default=due)
            all_started = len(began) == n and latest - due <= timedelta(seconds=goal)
            print(
                f"  goal, all {n} started within {goal:g} s of the due second: "
                f"{'met' if all_started else 'NOT met'}"
            )
            print(f"  occurrence -> run created_at: {spread(after('created_at'))}")
            print(f"  occurrence -> run started_at: {spread(after('started_at'))}")
            handed = sum(1 for f in made if (f.available_at or f.created_at) > f.created_at)
            print(f"  runs handed off to another pool process (at least once): {handed}")
            report_cpu(schedulers, len(made))
            spent = worker.cpu_end - worker.cpu_start
            print(
                f"  worker (pid {worker.process.pid}, main and pool processes): {spent:.2f} "
                f"CPU s ({per_run(spent, len(ended))})"
            )
            servers.report(len(made))
            for scheduler in schedulers:
                for line in scheduler.troubles()[:10]:
                    print(f"  {scheduler.label} log: {line}")
            for line in worker.troubles()[:10]:
                print(f"  worker log: {line}")
        finally:
            for scheduler in schedulers:
                if scheduler.process.poll() is None:
                    scheduler.process.kill()
                    scheduler.process.wait()
            worker.stop()
            wired.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=["all", "lag", "once", "burst"], default="all")
    parser.add_argument("--lag-schedules", type=int, default=10_000)
    parser.add_argument("--lag-seconds", type=float, default=90.0)
    parser.add_argument(
        "--lead-seconds",
        type=int,
        default=5,
        help="from the insert of the lag and burst phases' schedules to the first due",
    )
    parser.add_argument("--schedulers", type=int, default=3)
    parser.add_argument("--once-schedules", type=int, default=200)
    parser.add_argument("--once-seconds", type=float, default=60.0)
    parser.add_argument("--burst-schedules", type=int, default=10_000)
    parser.add_argument(
        "--burst-concurrency", type=int, default=2, help="the burst phase worker's pool processes"
    )
    parser.add_argument(
        "--burst-timeout",
        type=float,
        default=180.0,
        help="the burst phase ends this long after the due second if not all runs ended",
    )
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
        print(
            f"queue {queue} (nothing consumes it; the burst phase's worker consumes "
            f"{queue}-burst); logs in {logdir}"
        )
        if args.phase in ("all", "lag"):
            lag_phase(args, env, logdir, queue)
        if args.phase in ("all", "once"):
            once_phase(args, env, logdir, queue)
        if args.phase in ("all", "burst"):
            burst_phase(args, env, logdir, queue)
    finally:
        keys = {queue, *(k.decode() for k in client.scan_iter(match=f"*{queue}*"))}
        removed = client.delete(*keys)
        print(f"\nremoved {removed} Redis keys of the queue ({', '.join(sorted(keys))})")


if __name__ == "__main__":
    main()
