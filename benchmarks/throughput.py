"""End-to-end throughput of `task:echo` runs through the HTTP API vs plain Celery no-op jobs.

Both run on this machine in the same invocation, each with one prefork worker of 2 processes
on the local Redis (durable settings: late acks, prefetch 1); plain Celery is measured with
task events off and again with them on (``-E``, as runs ships), and as the issue's durable
yardstick (one INSERT before the send and one UPDATE in the job, raw psycopg); runs use a fresh PostgreSQL
database, the API in one process (``--api-workers N``: N processes on its port, their CPU summed
as the API's), and task events on as shipped. Runs are created by wrk (a C load
generator, whose CPU is reported) for a few seconds, then counted until all completed.
Prints runs/s, jobs/s, their ratio, and the CPU each part spent per run (and per job of
plain Celery with task events).
Usage: python benchmarks/throughput.py [--rounds 3] [--seconds 5] [--api-workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import dbos_peer, procrastinate_peer  # noqa: E402
from benchmarks.stack import REDIS_URL, RunsSystem, runs_system, start, stop, wait_for  # noqa: E402


def start_plain_worker(
    queue: str, counter: str, log: Path, *, events: bool, concurrency: int = 2
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A prefork worker (2 processes) of plain Celery no-op jobs that count themselves in
    ``counter``; ``events``: with task events on (``-E``), as runs' worker ships."""
    env = {
        **os.environ,
        "BENCH_QUEUE": queue,
        "BENCH_COUNTER": counter,
        "BENCH_REDIS_URL": REDIS_URL,
    }
    argv = [sys.executable, "-m", "celery", "-A", "benchmarks.plain_celery", "worker"]
    argv += ["-P", "prefork", "-c", str(concurrency), "-Q", queue, "-l", "WARNING"]
    argv += ["--without-mingle", "--without-gossip"]
    if events:
        argv.append("-E")
    return start(argv, env, log), env


def plain_celery(
    n: int,
    logdir: Path,
    *,
    events: bool = False,
    durable: bool = False,
    concurrency: int = 2,
    task_seconds: float = 0.0,
) -> tuple[float, dict[str, float]]:
    """Jobs/s of ``n`` no-op jobs, and the CPU seconds per job of each part (the sender is
    this script); ``durable``: each job's row is inserted (committed) before its send and
    updated by the job, through raw psycopg (the issue's durable yardstick)."""
    queue = f"bench-plain-{uuid.uuid4().hex[:6]}"
    counter = f"bench:plain:{queue}"
    log = logdir / "plain-worker.log"
    worker, env = start_plain_worker(queue, counter, log, events=events, concurrency=concurrency)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        os.environ.update(env)
        from benchmarks.plain_celery import app, insert_job, prepare_table

        app.conf.task_default_queue = queue
        app.send_task("noop", queue=queue)  # warm-up, waits for the worker below
        wait_for(lambda: client.get(counter) == b"1", 60, "plain worker")
        client.set(counter, 0)
        db = prepare_table() if durable else None
        groups = parts(worker.pid)
        before = {part: cpu_seconds(pids) for part, pids in groups.items()}
        sender_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for job_id in range(n):
            if task_seconds:
                app.send_task("sleep", args=(task_seconds,), queue=queue)
            elif db is None:
                app.send_task("noop", queue=queue)
            else:
                insert_job(db, job_id)
                app.send_task("durable", args=(job_id,), queue=queue)
        wait_for(lambda: int(client.get(counter) or 0) >= n, 300, "plain jobs")
        rate = n / (time.perf_counter() - started)
        sender = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {
            part: sum(cpu_seconds(pids).get(p, 0) - before[part].get(p, 0) for p in pids) / n
            for part, pids in groups.items()
        }
        cpu["sender (this script)"] = (
            sender.ru_utime + sender.ru_stime - sender_before.ru_utime - sender_before.ru_stime
        ) / n
        if db is not None:
            db.close()
        return rate, cpu
    finally:
        stop(worker)
        client.delete(counter)


POST_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) so far of each process."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def parts(worker_pid: int, api_pid: int | None = None) -> dict[str, list[int]]:
    """The processes of each part, for CPU accounting; the API's are ``api_pid`` and its
    children (the processes of `runs api --workers N`)."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        pid = int(entry.name)
        if pid == worker_pid:
            part = "worker main process"
        elif parent == worker_pid:
            part = "worker pool processes"
        elif api_pid in (pid, parent) or (api_pid is None and "runs.cli api" in command):
            part = "api"
        elif "postgres" in command:
            part = "postgres"
        elif "redis-server" in command:
            part = "redis"
        elif "beam.smp" in command and "rabbit" in command:
            part = "rabbitmq"
        else:
            continue
        found.setdefault(part, []).append(pid)
    return found


def postgres_pids() -> list[int]:
    return parts(-1).get("postgres", [])


def runs_stack(
    seconds: int,
    connections: int,
    logdir: Path,
    concurrency: int = 2,
    api_workers: int = 1,
    task_seconds: float = 0.0,
    **env: str,
) -> tuple[float, int, dict[str, float]]:
    """Runs created by wrk for ``seconds`` through POST /runs until all completed: returns
    (runs/s from the first request to the last completion, runs, CPU seconds per part).
    ``task_seconds``: ``task:sleep`` runs of that long instead of ``task:echo``; ``env``:
    settings of the runs processes."""
    with runs_system(logdir, concurrency=concurrency, api_workers=api_workers, **env) as system:
        return _measure(system, seconds, connections, logdir, task_seconds)


def _measure(
    system: RunsSystem, seconds: int, connections: int, logdir: Path, task_seconds: float = 0.0
) -> tuple[float, int, dict[str, float]]:
    body = system.task_body
    if task_seconds:
        body["request"] = {"target": "task:sleep", "config": {"seconds": task_seconds}}
    script = logdir / "post.lua"
    script.write_text(POST_SCRIPT % (json.dumps(body), system.token))
    groups = parts(system.worker.pid, system.api.pid)
    before = {part: cpu_seconds(pids) for part, pids in groups.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(script),
            system.base + "/runs",
        ],
        check=True,
        capture_output=True,
    )
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    created = system.count() - 1
    wait_for(lambda: system.count("completed") >= created + 1, 600, "runs")
    rate = created / (time.perf_counter() - started)
    cpu = {
        part: sum(cpu_seconds(pids).get(p, 0) - before[part].get(p, 0) for p in pids) / created
        for part, pids in groups.items()
    }
    spent = children.ru_utime + children.ru_stime
    cpu["load generator (wrk)"] = (
        spent - children_before.ru_utime - children_before.ru_stime
    ) / created
    return rate, created, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000, help="plain Celery jobs per round")
    parser.add_argument("--seconds", type=int, default=5, help="wrk's time per round")
    parser.add_argument("--connections", type=int, default=8, help="wrk's connections")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--concurrency", type=int, default=2, help="pool processes of each worker (both sides)"
    )
    parser.add_argument(
        "--api-workers", type=int, default=1, help="processes of `runs api` (its --workers)"
    )
    parser.add_argument(
        "--task-ms",
        type=float,
        default=0.0,
        help="tasks that sleep this long (runs: task:sleep; plain Celery: a sleep job); "
        "measured against plain Celery only",
    )
    args = parser.parse_args()
    logdir = ROOT / ".runs" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    seconds = args.task_ms / 1000
    jobs = args.jobs if not seconds else max(200, int(args.jobs * min(1.0, 0.002 / seconds)))
    peers = not seconds
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[dict[str, float]]] = {}

    def note(name: str, rate: float, cpu: dict[str, float] | None = None) -> None:
        rates.setdefault(name, []).append(rate)
        if cpu is not None:
            cpus.setdefault(name, []).append(cpu)

    for round_ in range(args.rounds):
        common = {"concurrency": args.concurrency, "task_seconds": seconds}
        note(PLAIN, *plain_celery(jobs, logdir, **common))
        note(PLAIN_EVENTS, *plain_celery(jobs, logdir, events=True, **common))
        if peers:
            note(DURABLE, plain_celery(jobs, logdir, durable=True, **common)[0])
        rate, created, cpu = runs_stack(
            args.seconds, args.connections, logdir, args.concurrency, args.api_workers, seconds
        )
        note(RUNS, rate, cpu)
        if peers:
            note(PROCRASTINATE, procrastinate_peer.throughput(jobs // 2, logdir))
            if dbos_peer.available():
                note(DBOS, *dbos_peer.throughput(jobs // 2, logdir))
        print(
            f"round {round_ + 1} ({created} runs): "
            + ", ".join(f"{name} {values[-1]:.0f}/s" for name, values in rates.items()),
            flush=True,
        )
    report(rates, cpus)


PLAIN = "plain Celery (task events off)"
PLAIN_EVENTS = "plain Celery (task events on)"
DURABLE = "Celery + INSERT + UPDATE (raw psycopg, events off)"
RUNS = "runs (POST /runs -> completed)"
PROCRASTINATE = "Procrastinate 3 (concurrency 2)"
DBOS = "DBOS (1 process, worker_concurrency 64, polling 0.05 s)"


def report(rates: dict[str, list[float]], cpus: dict[str, list[dict[str, float]]]) -> None:
    """Medians of the rounds, each system beside plain Celery, and runs beside each peer."""
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print("median of rounds, per second (ratio to plain Celery; runs' ratio to it):")
    for name, rate in medians.items():
        print(
            f"  {name:52} {rate:7.0f}  ({rate / medians[PLAIN]:.2f}x plain; "
            f"runs/it {medians[RUNS] / rate:.2f})"
        )
    for name, rounds in cpus.items():
        print_cpu(f"CPU per unit of {name} (ms, median of rounds):", rounds)


def print_cpu(title: str, rounds: list[dict[str, float]]) -> None:
    print(title)
    for part in sorted(rounds[0], key=lambda p: -rounds[0][p]):
        print(f"  {part:22} {1000 * statistics.median(c.get(part, 0) for c in rounds):6.2f}")
    total = statistics.median(sum(c.values()) for c in rounds)
    print(f"  {'all parts':22} {1000 * total:6.2f}")


if __name__ == "__main__":
    main()
