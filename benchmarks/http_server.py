"""What the HTTP limits cost: `runs api` (uvicorn with runs.api.server's protocol) against the
same app under stock uvicorn (httptools), in one invocation, rounds alternating.

Each round runs wrk (one thread, 16 connections) against GET /healthz and against an
authenticated GET /runs/{id} (token check and a PostgreSQL read) on a fresh database. Prints
requests/s and p99 per server and their ratio. Needs `wrk` (Debian package).
Usage: python benchmarks/http_server.py [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SERVERS = {
    "limited (runs api)": ["-m", "runs.cli", "api", "--port", "{port}"],
    "stock uvicorn": [
        "-m",
        "uvicorn",
        "--factory",
        "runs.api.app:create_app_from_env",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--port",
        "{port}",
    ],
}


def fresh_database() -> tuple[str, str, str]:
    """A migrated database with a project, a token and one run: (url, token, run id)."""
    from runs.domain.definitions import Definition
    from runs.persistence import migrate
    from runs.persistence.engine import create_engine
    from runs.services.access import AccessService
    from runs.services.catalog import DefinitionCatalog

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"bench_http_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    engine = create_engine(url)
    DefinitionCatalog(engine, cache_seconds=0).register([Definition("task:echo", "task")])
    access = AccessService(engine)
    project = access.create_project("bench")
    _, token = access.create_token("bench")
    engine.dispose()
    return url, token, project.id


def start(name: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, *(a.format(port=port) for a in SERVERS[name])]
    with log.open("ab") as handle:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=handle)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"{name} did not start; see {log}")
        time.sleep(0.1)


def wrk(url: str, seconds: int, token: str | None) -> tuple[float, float]:
    argv = ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", url]
    if token:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    url, token, project_id = fresh_database()
    env = {
        **os.environ,
        "RUNS_DATABASE_URL": url,
        "RUNS_REDIS_URL": REDIS_URL,
        "RUNS_DEFAULT_QUEUE": f"bench-http-{uuid.uuid4().hex[:6]}",
        "RUNS_LOG_LEVEL": "WARNING",
    }
    logdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    run_id = None
    for round_no in range(args.rounds):
        for name in SERVERS:
            port = 18000 + round_no * 10 + list(SERVERS).index(name)
            process = start(name, port, env, logdir / f"{name.split()[0]}.log")
            try:
                base = f"http://127.0.0.1:{port}"
                if run_id is None:
                    body = {
                        "kind": "task",
                        "owner": {"kind": "project", "id": project_id},
                        "request": {"target": "task:echo", "config": {"n": 1}},
                    }
                    headers = {"Authorization": f"Bearer {token}"}
                    created = httpx.post(f"{base}/runs", json=body, headers=headers)
                    run_id = created.json()["run"]["run_id"]
                for path, auth in (("/healthz", None), (f"/runs/{run_id}", token)):
                    label = "GET /runs/{id}" if auth else path
                    measured = wrk(base + path, args.seconds, auth)
                    results.setdefault((name, label), []).append(measured)
            finally:
                process.terminate()
                process.wait(timeout=15)
    print(f"\nwrk -t1 -c16, {args.rounds} rounds of {args.seconds} s (medians); logs in {logdir}")
    for label in ("/healthz", "GET /runs/{id}"):
        medians = {
            name: (
                statistics.median(r for r, _ in results[(name, label)]),
                statistics.median(p for _, p in results[(name, label)]),
            )
            for name in SERVERS
        }
        for name, (rps, p99) in medians.items():
            print(f"  {label:16} {name:20} {rps:8.0f} req/s   p99 {p99:6.1f} ms")
        limited, stock = medians["limited (runs api)"][0], medians["stock uvicorn"][0]
        print(f"  {label:16} limited / stock      {limited / stock:8.2f}")


if __name__ == "__main__":
    main()
