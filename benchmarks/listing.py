"""GET /projects/{ref}/runs with 1,000,000 runs in the project: latency per filter.

Fills a fresh PostgreSQL database in SQL (statuses, kinds, targets, children and times spread
like a busy project's: most runs completed, a few failed, few still active), then drives each
URL with wrk (one connection, so that the figures are per request) against one API process.
Usage: python benchmarks/listing.py [--runs 1000000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import REDIS_URL, fresh_database, start, stop, wait_for  # noqa: E402

FILL = """
INSERT INTO runs (project_id, run_id, kind, status, owner_kind, owner_id, parent_run_id,
                  root_run_id, target, workflow_id, queue, attempt, artifacts, config,
                  created_at, updated_at, started_at, completed_at)
SELECT :project, 'run_' || lpad(i::text, 8, '0'),
       CASE WHEN i % 10 = 0 THEN 'workflow' ELSE 'task' END,
       CASE WHEN i % 1000 = 1 THEN 'pending' WHEN i % 1000 = 2 THEN 'running'
            WHEN i % 50 = 3 THEN 'failed' WHEN i % 100 = 4 THEN 'cancelled'
            WHEN i % 5000 = 5 THEN 'waiting' ELSE 'completed' END,
       'project', :project,
       CASE WHEN i % 10 = 7 THEN 'run_' || lpad((i - 1)::text, 8, '0') END,
       'run_' || lpad(i::text, 8, '0'),
       CASE WHEN i % 10 = 0 THEN 'workflow:flow-' || (i % 3) ELSE 'task:t-' || (i % 9) END,
       CASE WHEN i % 10 = 0 THEN 'flow-' || (i % 3) END,
       'runs', 1, '[]'::jsonb, '{"i": 1}'::jsonb,
       now() - (:count - i) * interval '2 seconds',
       now() - (:count - i) * interval '2 seconds',
       now() - (:count - i) * interval '2 seconds',
       now() - (:count - i) * interval '2 seconds' + interval '1 second'
FROM generate_series(1, :count) AS i
"""

QUERIES = {
    "newest page": "",
    "status=failed": "status=failed",
    "status=failed,cancelled": "status=failed,cancelled",
    "status=pending (rare)": "status=pending",
    "status=waiting (rarest)": "status=waiting",
    "kind=workflow": "kind=workflow",
    "target=task:t-4": "target=task:t-4",
    "target=workflow:flow-1,task:t-2": "target=workflow:flow-1,task:t-2",
    "status=failed&target=task:t-3": "status=failed&target=task:t-3",
    "root_only=true": "root_only=true",
    "parent_run_id": "parent_run_id=run_00500006",
    "limit=100": "limit=100",
}


def wrk_latency(url: str, token: str, seconds: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, requests/s) of one wrk connection on ``url``."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            "-c1",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        found = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out)
        assert found is not None, out
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rate is not None, out
    return ms("50"), ms("99"), float(rate.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    from runs.cli.embedded import free_port
    from runs.persistence.engine import create_engine
    from runs.services.access import AccessService

    logdir = ROOT / ".runs" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    with fresh_database("runs_list") as url:
        engine = create_engine(url)
        access = AccessService(engine)
        project = access.create_project("bench")
        _, token = access.create_token("bench")
        with engine.begin() as conn:
            conn.execute(sa.text(FILL), {"project": project.id, "count": args.runs})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE runs"))
        port = free_port(0)
        env = {
            **os.environ,
            "RUNS_DATABASE_URL": url,
            "RUNS_REDIS_URL": REDIS_URL,
            "RUNS_DEFAULT_QUEUE": f"bench-list-{uuid.uuid4().hex[:6]}",
            "RUNS_LOG_LEVEL": "WARNING",
        }
        api = start(
            [sys.executable, "-m", "runs.cli", "api", "--port", str(port)],
            env,
            logdir / "list-api.log",
        )
        base = f"http://127.0.0.1:{port}/projects/{project.slug}/runs"
        try:
            wait_for(lambda: _up(base, token), 60, "API")
            cursor = _deep_cursor(base, token, pages=50)
            queries = {**QUERIES, "page 51 (cursor)": f"cursor={cursor}"}
            print(f"{args.runs:,} runs in the project; wrk, one connection, {args.seconds} s each")
            for label, query in queries.items():
                url_ = f"{base}?{query}" if query else base
                found = len(
                    httpx.get(url_, headers={"Authorization": f"Bearer {token}"}).json()["data"]
                )
                p50, p99, rate = wrk_latency(url_, token, args.seconds)
                print(
                    f"  {label:34} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  {rate:5.0f} req/s  "
                    f"({found} runs a page)"
                )
        finally:
            stop(api)
            engine.dispose()


def _up(base: str, token: str) -> bool:
    try:
        return httpx.get(base, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    except httpx.HTTPError:
        return False


def _deep_cursor(base: str, token: str, pages: int) -> str:
    cursor = None
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(pages):
            body = client.get(base, params={"cursor": cursor} if cursor else {}).json()
            cursor = body["page_info"]["next"]
    assert isinstance(cursor, str), json.dumps(body)[:200]
    return cursor


if __name__ == "__main__":
    main()
