"""Latency from accept to start with runs offered at a fixed rate (100/s by default), beside
Procrastinate's deferred -> started at the same rate, in one invocation.

Runs are created through POST /runs by an open-loop client (``--burst`` requests every
burst/rate seconds, whatever the answers; prebuilt requests over kept-alive connections); the
latency is read from the server's own clocks afterwards: the run's ``created_at`` (accept) to
its ``started_at`` (when its attempt really started, also for a run that waited in a group),
and, beside it, to its RUN_STARTED event (stamped when the run's stream is opened: for a
quick run of a group, with its close, so it trails ``started_at``). Before them, each pool
process runs two warm-up runs (``--no-warm-up``: only the stack's one), not measured. For
the goal at 80 % of the peak throughput, pass that rate (``--rate``; the peak is what
``throughput.py`` reports, with the same ``--concurrency`` and ``--api-workers``).

``--mix [FRACTION]``: task:sleep runs, a FRACTION (0.1) of them sleeping ``--long-seconds``
(1 s), the rest ``--short-seconds`` (1 ms), chosen at random; sent ``--burst`` (10) at a
time, so that the API accepts them together and they travel in groups (the worker hands a
group's runs not started 50 ms after its claim, RUNS_WORKER_HANDOFF_MS, to another pool
process). Start delays are reported for the short and the long runs apart, with how many of
each were handed off. The pool needs more processes than the long runs keep busy
(rate x fraction x long seconds): ``--concurrency`` defaults to twice that, plus 2. No peer
is measured in this mode.

Usage: python benchmarks/latency.py [--rate 100] [--seconds 10] [--burst 1] [--concurrency 2]
    [--api-workers 1] [--no-peers] [--no-warm-up] [--mix [0.1]] [--long-seconds 1]
    [--short-seconds 0.001] [--seed 1] [--logdir .runs/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import RunsSystem, runs_system  # noqa: E402


@dataclass
class Offered:
    count: int
    sent: float  # from the first burst sent to the last
    seconds: float  # from the first request sent to the last answer
    late_ms: float  # how far behind its schedule the client sent a burst at worst
    statuses: Counter[int]


async def offer(system: RunsSystem, bodies: Sequence[bytes], rate: float, burst: int) -> Offered:
    """POST /runs ``burst`` at a time every burst/rate seconds, whatever the answers (an open
    loop), over kept-alive connections with the requests prebuilt: a client cheap enough not
    to take the CPU it measures (its CPU time is reported). ``bodies``: one per run, in
    order."""
    url = httpx.URL(system.base)
    head = (
        f"POST /runs HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: Bearer {system.token}\r\nContent-Type: application/json\r\n"
    )
    requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
    idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
    statuses: Counter[int] = Counter()

    async def post(request: bytes) -> None:
        # Kept-alive connections are taken in turn; one the server closed while it was idle
        # never saw the request, which goes again on a new connection.
        for reuse in (bool(idle), False):
            if reuse:
                reader, writer = idle.popleft()
            else:
                reader, writer = await asyncio.open_connection(url.host, url.port)
            writer.write(request)
            try:
                answer = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if reuse:
                    continue
                raise
            found = re.search(rb"(?i)content-length: *(\d+)", answer)
            await reader.readexactly(int(found.group(1)) if found else 0)
            statuses[int(answer.split(b" ", 2)[1])] += 1
            idle.append((reader, writer))
            return

    started = time.perf_counter()
    late = last = 0.0
    sent: list[asyncio.Task[None]] = []
    for tick, first in enumerate(range(0, len(requests), burst)):
        due = started + tick * burst / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        last = time.perf_counter()
        late = max(late, last - due)
        sent.extend(asyncio.create_task(post(r)) for r in requests[first : first + burst])
    await asyncio.gather(*sent)
    seconds = time.perf_counter() - started
    for _, writer in idle:
        writer.close()
    return Offered(len(requests), last - started, seconds, 1000 * late, statuses)


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
        f"p95 {percentile(ordered, 0.95):.1f} ms, p99 {percentile(ordered, 0.99):.1f} ms, "
        f"max {ordered[-1]:.1f} ms"
    )


# -- the runs -------------------------------------------------------------------------------


# What a label's runs ask for: the target and its config.
Kinds = dict[str, tuple[str, dict[str, Any]]]


def bodies_for(system: RunsSystem, labels: Sequence[str], kinds: Kinds) -> list[bytes]:
    """A request body per run; each run's config carries its label (``bench``), which is how
    the measured runs are told from the warm-up and from each other afterwards."""
    made: dict[str, bytes] = {}
    for label, (target, config) in kinds.items():
        request = {"target": target, "config": {**config, "bench": label}}
        made[label] = json.dumps({**system.task_body, "request": request}).encode()
    return [made[label] for label in labels]


def wait_ended(system: RunsSystem, *, stall: float = 60.0) -> None:
    """Until every run ended; gives up when none ended for ``stall`` seconds."""
    left, last, since = 1, -1, time.monotonic()
    query = sa.text("SELECT count(*) FROM runs WHERE status IN ('pending', 'running', 'waiting')")
    while True:
        with system.engine.connect() as conn:
            left = int(conn.execute(query).scalar_one())
        if not left:
            return
        if left != last:
            last, since = left, time.monotonic()
        elif time.monotonic() - since > stall:
            raise SystemExit(f"{left} runs did not end in {stall:g} s; see the worker log")
        time.sleep(0.2)


def warm_up(system: RunsSystem, processes: int) -> None:
    """Two 0.2 s sleeps a pool process, each its own job (sent 20 ms apart, one at a time, so
    that each goes to an idle process): every process has run an attempt before the measured
    runs come (these runs carry no ``bench`` label: they are not measured)."""
    body = {**system.task_body, "request": {"target": "task:sleep", "config": {"seconds": 0.2}}}
    offered = asyncio.run(offer(system, [json.dumps(body).encode()] * 2 * processes, 50, 1))
    if set(offered.statuses) != {202}:
        raise SystemExit(f"warm-up runs refused: {dict(offered.statuses)}")
    wait_ended(system)


@dataclass(frozen=True)
class Measured:
    """One measured run, from the server's clocks (ms after its ``created_at``)."""

    label: str
    status: str
    started: float | None  # its started_at
    event: float | None  # its RUN_STARTED event
    handed_off: bool  # handed to another pool process (at least once)


def measured(system: RunsSystem) -> list[Measured]:
    """The measured runs. A hand-off sets ``available_at`` to its time (it is ``created_at``
    otherwise, and these runs are not retried)."""
    query = sa.text(
        "SELECT r.config->>'bench' AS label, r.status, "
        "extract(epoch FROM r.started_at - r.created_at) * 1000 AS started, "
        "extract(epoch FROM e.created_at - r.created_at) * 1000 AS event, "
        "r.available_at > r.created_at AS handed_off "
        "FROM runs r LEFT JOIN run_events e ON e.project_id = r.project_id "
        "AND e.run_id = r.run_id AND e.event_type = 'RUN_STARTED' "
        "WHERE r.config->>'bench' IS NOT NULL"
    )

    def ms(value: Any) -> float | None:
        return None if value is None else float(value)

    with system.engine.connect() as conn:
        return [
            Measured(row.label, row.status, ms(row.started), ms(row.event), bool(row.handed_off))
            for row in conn.execute(query)
        ]


def runs_latency(
    labels: Sequence[str],
    kinds: Kinds,
    args: argparse.Namespace,
    logdir: Path,
) -> list[Measured]:
    with runs_system(logdir, concurrency=args.concurrency, api_workers=args.api_workers) as system:
        if not args.no_warm_up:
            warm_up(system, args.concurrency)
        bodies = bodies_for(system, labels, kinds)
        before = time.process_time()
        offered = asyncio.run(offer(system, bodies, args.rate, args.burst))
        client_ms = (time.process_time() - before) * 1000 / offered.count
        rate = offered.count / (offered.sent + args.burst / args.rate)
        print(
            f"load generator: {offered.count} requests offered at {rate:.1f}/s (the last "
            f"answer {offered.seconds:.2f} s after the first request), at worst "
            f"{offered.late_ms:.1f} ms behind its schedule, {client_ms:.2f} ms of CPU per "
            f"request; answers {dict(offered.statuses)}"
        )
        if set(offered.statuses) != {202}:
            print("WARNING: not every create was accepted (202)")
        wait_ended(system)
        return measured(system)


def report(found: Sequence[Measured], labels: Sequence[str], what: Callable[[str], str]) -> None:
    for label in sorted(set(labels), key=labels.index):
        runs = [m for m in found if m.label == label]
        handed = [m for m in runs if m.handed_off]
        odd = Counter(m.status for m in runs if m.status != "completed")
        print(f"runs, {what(label)}:")
        print(f"  accept -> started_at:  {started(runs)}")
        print(f"  accept -> RUN_STARTED: {spread([m.event for m in runs if m.event is not None])}")
        print(f"  of them handed off to another pool process, -> started_at: {started(handed)}")
        print(
            "  of them not handed off, -> started_at: "
            f"{started([m for m in runs if not m.handed_off])}"
        )
        if odd:
            print(f"  WARNING: runs not completed: {dict(odd)}")


def started(runs: Sequence[Measured]) -> str:
    return spread([m.started for m in runs if m.started is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="runs offered per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long they are offered")
    parser.add_argument(
        "--burst",
        type=int,
        default=None,
        help="requests sent together (default 1; 10 with --mix)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="pool processes of the worker (default 2; with --mix, enough for the long runs)",
    )
    parser.add_argument(
        "--api-workers", type=int, default=1, help="processes of `runs api` (its --workers)"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the Procrastinate comparison")
    parser.add_argument(
        "--mix",
        type=float,
        nargs="?",
        const=0.1,
        default=None,
        metavar="FRACTION",
        help="task:sleep runs, this fraction (0.1) long and the rest short",
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="measure from the stack's one warm-up run (without two runs per pool process first)",
    )
    parser.add_argument("--long-seconds", type=float, default=1.0)
    parser.add_argument("--short-seconds", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=1, help="which runs of the mix are long")
    parser.add_argument(
        "--logdir", type=Path, default=ROOT / ".runs" / "bench", help="the processes' logs"
    )
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    if args.burst is None:
        args.burst = 10 if args.mix is not None else 1
    if args.mix is None:
        labels = ["echo"] * count
        kinds: Kinds = {"echo": ("task:echo", {})}
    else:
        longs = round(args.mix * count)
        labels = ["long"] * longs + ["short"] * (count - longs)
        random.Random(args.seed).shuffle(labels)
        kinds = {
            "short": ("task:sleep", {"seconds": args.short_seconds}),
            "long": ("task:sleep", {"seconds": args.long_seconds}),
        }
        busy = args.rate * args.mix * args.long_seconds
        if args.concurrency is None:
            args.concurrency = max(2, math.ceil(2 * busy) + 2)
        print(
            f"mix: {longs} of {count} runs sleep {args.long_seconds:g} s, the rest "
            f"{args.short_seconds:g} s; bursts of {args.burst}; the long runs keep {busy:.1f} "
            f"pool processes busy on average, of {args.concurrency}"
        )
        if args.concurrency <= busy:
            print("WARNING: fewer pool processes than the long runs need; the backlog grows")
    if args.concurrency is None:
        args.concurrency = 2
    logdir = args.logdir
    logdir.mkdir(parents=True, exist_ok=True)

    found = runs_latency(labels, kinds, args, logdir)
    setup = (
        f"{args.rate:g}/s offered, bursts of {args.burst}, {args.concurrency} pool processes, "
        f"{args.api_workers} API process{'es' if args.api_workers > 1 else ''}"
    )
    if args.mix is None:
        report(found, labels, lambda _: f"task:echo, {setup}")
    else:
        seconds = {"short": args.short_seconds, "long": args.long_seconds}
        report(found, labels, lambda label: f"{label} ({seconds[label]:g} s sleeps), {setup}")

    if args.no_peers or args.mix is not None:
        return
    from benchmarks import procrastinate_peer  # needs the bench extra

    p50, p99 = procrastinate_peer.latency(args.rate, args.seconds, logdir)
    print(
        f"Procrastinate: deferred -> started at {args.rate:g}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


if __name__ == "__main__":
    main()
