"""The fault matrix: a whole system under one fault at a time, and what became of every run.

    python benchmarks/faults.py                      # every scenario, database ones 3 times
    python benchmarks/faults.py --scenarios pg-fast,pg-stall --repeats 1 --runs 150

Each scenario starts its own system: a private PostgreSQL cluster (``initdb``/``pg_ctl`` on a
free port, a fresh database per scenario), a private ``redis-server`` for the event log and
another for the broker (both append-only, as compose runs Redis), one ``runs api`` and two
``runs worker`` pools of two processes. It creates ``--runs`` runs through ``POST /runs`` with
the Python SDK (which retries 503 and dropped connections with the same ``public_id``), ten at
once every second, so that they travel together (one job, one claim a group): task
runs of 0.2-2 s with two retries, and one run in ten a workflow of two such steps. Halfway
through the creates it injects the fault:

    worker-kill   SIGKILL x10: a pool process, or a whole worker (restarted), in turn
    redis-restart the event log's Redis stops and starts again (nothing lost: append-only)
    pg-fast       pg_ctl restart -m fast
    pg-immediate  pg_ctl restart -m immediate (crash recovery)
    pg-stall      every PostgreSQL process stopped (SIGSTOP) for longer than the lease
    broker-down   the broker's Redis stopped for 5 s while runs are created
    api-kill      the API SIGKILLed while creates are in flight, started again after 1 s

Every task writes ``start`` and ``end`` lines to an append-only journal outside the run system,
so that the script counts, per run: accepted (202 answered), terminal within lease + 60 s
after the fault, lost (accepted, never stored), stuck (not terminal then), executions beyond
the retry policy, completed runs whose code never ran to its end, runs whose code ran to its
end but were recorded failed, event-id gaps (ids not 1..n, or the terminal event not last),
and (for information) runs whose code ran again after it had ended once. One table at the end;
the exit status is 1 when any of the must-be-zero columns is not.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import start, stop, wait_for  # noqa: E402
from runs.cli.embedded import free_port  # noqa: E402
from runs.client import RetryPolicy, RunsClientError, create_runs_client  # noqa: E402
from runs.persistence import migrate  # noqa: E402
from runs.persistence.engine import create_engine  # noqa: E402
from runs.services.access import AccessService  # noqa: E402
from tests.support.private_servers import PrivatePostgres, PrivateRedis  # noqa: E402

LEASE_SECONDS = 10
BACKOFF_LIMIT = 2
TASK = "task:durable/journaled"
WORKFLOW = "workflow:durable/journaled-steps"
SCENARIOS = [
    "worker-kill",
    "redis-restart",
    "pg-fast",
    "pg-immediate",
    "pg-stall",
    "broker-down",
    "api-kill",
]
DATABASE_SCENARIOS = {"pg-fast", "pg-immediate", "pg-stall"}
MUST_BE_ZERO = ("lost", "stuck", "beyond", "never_ran", "ran_then_failed", "gaps")


@dataclass
class Stack:
    """The processes of one scenario."""

    directory: Path
    postgres: PrivatePostgres
    database_url: str
    events: PrivateRedis
    broker: PrivateRedis
    port: int
    env: dict[str, str]
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self) -> None:
        self.api = start(
            [sys.executable, "-m", "runs.cli", "api", "--port", str(self.port)],
            self.env,
            self.directory / f"api-{time.monotonic_ns()}.log",
        )

        def up() -> bool:
            try:
                return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the API")

    def start_worker(self) -> subprocess.Popen[bytes]:
        self.started += 1
        log = self.directory / f"worker-{self.started}.log"
        process = start(
            [
                sys.executable,
                "-m",
                "runs.cli",
                "worker",
                "--concurrency",
                "2",
                "--hostname",
                f"faults-{self.started}-{uuid.uuid4().hex[:6]}@%h",
            ],
            self.env,
            log,
        )
        wait_for(lambda: " ready." in log.read_text(errors="replace"), 60, "a worker")
        self.workers.append(process)
        return process

    def stop_all(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            if process.poll() is None:
                stop(process)
        self.events.stop()
        self.broker.stop()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):
            found += [int(p) for p in entry.read_text().split()]
    return found


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    for pid in [process.pid, *children(process.pid)]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


# -- creating runs -----------------------------------------------------------------------------


@dataclass
class Creates:
    accepted: dict[str, str] = field(default_factory=dict)  # run id -> target
    refused: Counter[str] = field(default_factory=Counter)


BURST = 10  # runs created at once (they travel together: one job, one claim), once a second


def create_runs(
    stack: Stack, token: str, count: int, journal: Path, halfway: threading.Event
) -> Creates:
    """Create ``count`` runs, ``BURST`` at once every second (about 10 a second); ``halfway``
    is set after half of them."""
    done = Creates()
    rng = random.Random(7)
    policy = RetryPolicy(max_retries=8, initial_delay=0.5, max_delay=5.0)
    plans = [_plan(i, rng, journal) for i in range(count)]
    with (
        create_runs_client(
            api_url=stack.base, auth_token=token, retry=policy, timeout=30
        ) as client,
        ThreadPoolExecutor(BURST) as pool,
    ):

        def create(plan: tuple[str, dict[str, Any]]) -> None:
            target, fields = plan
            try:
                if target == WORKFLOW:
                    created = client.create_workflow_run(WORKFLOW, **fields)
                else:
                    created = client.create_task_run(TASK, backoff_limit=BACKOFF_LIMIT, **fields)
                done.accepted[created.run.run_id] = target
            except RunsClientError as error:
                with counting:
                    done.refused[type(error).__name__] += 1

        counting = threading.Lock()
        for first in range(0, count, BURST):
            if first >= count // 2:
                halfway.set()
            began = time.monotonic()
            list(pool.map(create, plans[first : first + BURST]))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
    halfway.set()
    return done


def _plan(i: int, rng: random.Random, journal: Path) -> tuple[str, dict[str, Any]]:
    """One run in ten a workflow of two steps, the others tasks of 0.2-2 s."""
    if i % 10 == 9:
        seconds = round(rng.uniform(0.2, 0.6), 2)
        return WORKFLOW, {"input": {"seconds": seconds, "journal": str(journal)}}
    seconds = round(rng.uniform(0.2, 2.0), 2)
    return TASK, {"config": {"seconds": seconds, "journal": str(journal)}}


# -- faults ------------------------------------------------------------------------------------


def inject(scenario: str, stack: Stack) -> None:
    if scenario == "worker-kill":
        rng = random.Random(11)
        for n in range(10):
            live = [w for w in stack.workers if w.poll() is None]
            victim = rng.choice(live)
            if n % 2 == 0 and children(victim.pid):
                pool = children(victim.pid)
                os.kill(rng.choice(pool), signal.SIGKILL)  # Celery replaces it
            else:
                kill_tree(victim)  # a machine gone: another takes its place
                stack.workers.remove(victim)
                stack.start_worker()
            time.sleep(1.5)
    elif scenario == "redis-restart":
        stack.events.stop()
        time.sleep(1.0)
        stack.events.start()
    elif scenario in ("pg-fast", "pg-immediate"):
        stack.postgres.restart("fast" if scenario == "pg-fast" else "immediate")
    elif scenario == "pg-stall":
        with stack.postgres.stalled():
            time.sleep(LEASE_SECONDS + 5)
    elif scenario == "broker-down":
        stack.broker.stop()
        time.sleep(5.0)
        stack.broker.start()
    elif scenario == "api-kill":
        assert stack.api is not None
        kill_tree(stack.api)
        time.sleep(1.0)
        stack.start_api()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


# -- counting ----------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    repeat: int
    accepted: int = 0
    created: int = 0
    terminal: int = 0
    lost: int = 0
    stuck: int = 0
    beyond: int = 0
    never_ran: int = 0
    ran_then_failed: int = 0
    gaps: int = 0
    ran_again: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def journal_of(path: Path) -> dict[str, list[tuple[str, int]]]:
    """Per unit (a task run, or "<run>/<step>"): its (start|end, attempt) lines in order."""
    units: dict[str, list[tuple[str, int]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            what, unit, attempt, _ = line.split()
            units[unit].append((what, int(attempt)))
    return units


def count(row: Row, engine: sa.Engine, creates: Creates, journal: Path) -> None:
    with engine.connect() as conn:
        stored = {
            r.run_id: r
            for r in conn.execute(sa.text("SELECT run_id, target, status, attempt FROM runs"))
        }
        events: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for r in conn.execute(
            sa.text("SELECT run_id, event_id, event_type FROM run_events ORDER BY run_id, event_id")
        ):
            events[r.run_id].append((r.event_id, r.event_type))
    units = journal_of(journal)
    row.accepted = len(creates.accepted)
    row.created = len(stored)
    row.lost = sum(run_id not in stored for run_id in creates.accepted)
    terminal = {"completed", "failed", "cancelled"}
    row.terminal = sum(r.status in terminal for r in stored.values())
    row.stuck = sum(r.status not in terminal for r in stored.values())
    for run_id, run in stored.items():
        steps = [f"{run_id}/first", f"{run_id}/second"] if run.target == WORKFLOW else [run_id]
        limit = 1 if run.target == WORKFLOW else BACKOFF_LIMIT + 1
        ended_units = 0
        for unit in steps:
            lines = units.get(unit, [])
            starts = [a for what, a in lines if what == "start"]
            if len(starts) > limit:
                row.beyond += 1
                row.notes.append(f"{unit}: {len(starts)} executions")
            ends = [i for i, (what, _) in enumerate(lines) if what == "end"]
            if ends:
                ended_units += 1
                if any(what == "start" for what, _ in lines[ends[0] + 1 :]):
                    row.ran_again += 1
        if run.status == "completed" and ended_units < len(steps):
            row.never_ran += 1
            row.notes.append(f"{run_id}: completed, but its code did not run to its end")
        if run.target == TASK and run.status == "failed" and ended_units:
            row.ran_then_failed += 1
            row.notes.append(f"{run_id}: its code ran to its end, recorded failed")
        if run.status in terminal:
            got = events.get(run_id, [])
            ids = [event_id for event_id, _ in got]
            last = got[-1][1] if got else None
            if ids != list(range(1, len(ids) + 1)) or last not in ("RUN_FINISHED", "RUN_ERROR"):
                row.gaps += 1
                row.notes.append(f"{run_id}: event ids {ids[:3]}..{ids[-3:]}, last {last}")


# -- one scenario ------------------------------------------------------------------------------


def run_scenario(
    scenario: str, repeat: int, postgres: PrivatePostgres, runs: int, workdir: Path
) -> Row:
    directory = workdir / f"{scenario}-{repeat}"
    directory.mkdir(parents=True)
    name = f"faults_{scenario.replace('-', '_')}_{repeat}_{uuid.uuid4().hex[:6]}"
    url = postgres.create_database(name)
    migrate.upgrade(url)
    events = PrivateRedis(directory / "redis-events", appendonly=True)
    broker = PrivateRedis(directory / "redis-broker", appendonly=True)
    events.start()
    broker.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNS_")},
        "RUNS_DATABASE_URL": url,
        "RUNS_REDIS_URL": events.url,
        "RUNS_BROKER_URL": broker.url,
        "RUNS_DEFINITIONS": '["workers.examples", "tests.support.durability_definitions"]',
        "RUNS_WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
        "RUNS_SWEEP_INTERVAL_SECONDS": "1",
        "RUNS_PENDING_REDISPATCH_SECONDS": "5",
        "RUNS_FINISH_RETRY_SECONDS": "60",
        "RUNS_CANCEL_GRACE_SECONDS": "2",
        "RUNS_RETRY_BACKOFF_SECONDS": "0.5",
        "RUNS_RETRY_BACKOFF_MAX_SECONDS": "2",
        "RUNS_AUTH_CACHE_SECONDS": "60",
        "RUNS_LOG_LEVEL": "INFO",
    }
    stack = Stack(directory, postgres, url, events, broker, free_port(0), env)
    engine = create_engine(url)
    row = Row(scenario, repeat)
    started = time.monotonic()
    try:
        access = AccessService(engine)
        project = access.create_project(f"faults-{uuid.uuid4().hex[:8]}")
        _, token = access.create_token(project.slug)
        stack.start_worker()
        stack.start_worker()
        stack.start_api()
        journal = directory / "journal"
        halfway = threading.Event()
        result: list[Creates] = []
        creator = threading.Thread(
            target=lambda: result.append(create_runs(stack, token, runs, journal, halfway))
        )
        creator.start()
        halfway.wait()
        inject(scenario, stack)
        fault_over = time.monotonic()
        creator.join()
        creates = result[0] if result else Creates()
        if creates.refused:
            row.notes.append(f"creates refused after retries: {dict(creates.refused)}")
        deadline = fault_over + LEASE_SECONDS + 60

        def all_terminal() -> bool:
            with suppress(sa.exc.OperationalError), engine.connect() as conn:
                left = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM runs WHERE status NOT IN ('completed', 'failed', 'cancelled')"
                    )
                ).scalar_one()
                return left == 0 and time.monotonic() > fault_over
            return False

        while not all_terminal() and time.monotonic() < max(deadline, fault_over):
            time.sleep(0.5)
        count(row, engine, creates, journal)
    finally:
        row.seconds = time.monotonic() - started
        stack.stop_all()
        engine.dispose()
    return row


def print_table(rows: list[Row]) -> None:
    columns = [
        ("scenario", "scenario"),
        ("#", "repeat"),
        ("accepted", "accepted"),
        ("stored", "created"),
        ("terminal", "terminal"),
        ("lost", "lost"),
        ("stuck", "stuck"),
        ("beyond policy", "beyond"),
        ("completed, never ran", "never_ran"),
        ("ran, recorded failed", "ran_then_failed"),
        ("event gaps", "gaps"),
        ("ran again after end", "ran_again"),
        ("s", "seconds"),
    ]
    print("| " + " | ".join(title for title, _ in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = []
        for _, name in columns:
            value = getattr(row, name)
            cells.append(f"{value:.0f}" if isinstance(value, float) else str(value))
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        for note in row.notes[:10]:
            print(f"  {row.scenario} #{row.repeat}: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3, help="of the database scenarios")
    parser.add_argument("--keep", action="store_true", help="keep the logs and journals")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {sorted(unknown)}; known: {SCENARIOS}")
    workdir = Path(tempfile.mkdtemp(prefix="runs-faults-"))
    postgres = PrivatePostgres()
    postgres.start()
    rows: list[Row] = []
    try:
        for scenario in chosen:
            for repeat in range(1, (args.repeats if scenario in DATABASE_SCENARIOS else 1) + 1):
                row = run_scenario(scenario, repeat, postgres, args.runs, workdir)
                rows.append(row)
                print(
                    f"{scenario} #{repeat}: {row.accepted} accepted, {row.terminal} terminal, "
                    + ", ".join(f"{name} {getattr(row, name)}" for name in MUST_BE_ZERO)
                    + f" ({row.seconds:.0f} s)",
                    flush=True,
                )
    finally:
        postgres.destroy()
        if args.keep:
            print(f"logs and journals: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)
    failed = [r for r in rows if any(getattr(r, name) for name in MUST_BE_ZERO)]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
