"""The suite itself: its test client imports without a warning, and a session leaves nothing
of its own in the shared Redis (``tests/support/redis_hygiene.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from runs.persistence import migrate
from runs.persistence.engine import create_engine
from runs.services.access import AccessService
from tests.support import redis_hygiene


def test_the_test_client_imports_without_a_warning() -> None:
    """Starlette's TestClient warns that running it on httpx is deprecated; on httpx2 (the dev
    extra) it does not."""
    imported = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import fastapi.testclient"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr


def test_a_session_cleans_its_own_keys_and_entries_and_no_one_elses(redis_url: str) -> None:
    """What ``redis_hygiene.clean`` deletes at the end of a session, on a made-up session
    (``mine``) beside another one still running (``theirs``)."""
    mine, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    project, other_project = f"p-{mine}", str(uuid.uuid4())
    queue, their_queue = f"q-{mine}", f"q-{theirs}"
    shared, emptied, gone = f"pidbox-{theirs}", f"fanout-{theirs}", f"gone-{theirs}"
    sep = "\x06\x16"
    in_a_while = time.time() + 3600  # never due for kombu's restore of unacked messages
    client = redis.Redis.from_url(redis_url)
    try:
        for name in (queue, f"{queue}{sep}3", their_queue):
            client.rpush(name, "job")
        for name in (queue, their_queue):
            client.sadd(f"_kombu.binding.{name}", f"{name}{sep}{sep}{name}")
            client.sadd(f"_kombu.binding_permanent.{name}", f"{name}{sep}{sep}{name}")
        client.sadd(
            f"_kombu.binding.{shared}", f"{sep}{sep}w-{mine}.pidbox", f"{sep}{sep}w-{theirs}"
        )
        client.sadd(f"_kombu.binding.{emptied}", f"{sep}{sep}w-{mine}.events")
        client.zadd(redis_hygiene.DEADLINES, {queue: in_a_while, shared: in_a_while})
        client.zadd(redis_hygiene.DEADLINES, {emptied: in_a_while, their_queue: in_a_while})
        client.zadd(redis_hygiene.DEADLINES, {gone: in_a_while})  # of no table: garbage
        for tag, name in ((f"t-{mine}", queue), (f"t-{theirs}", their_queue)):
            client.hset("unacked", tag, json.dumps([{"body": "x"}, name, name]))
            client.zadd("unacked_index", {tag: in_a_while})
        for ref in (f"{project}/run_1", f"{other_project}/run_1"):
            client.xadd(f"runs:{{{ref}}}:events", {"t": "RUN_STARTED"}, id="0-1")
            client.hset(f"runs:{{{ref}}}:meta", "attempt", 1)

        deleted = redis_hygiene.clean(client, mine, {project})

        assert {k.decode() for k in deleted} == {
            queue,
            f"{queue}{sep}3",
            f"_kombu.binding.{queue}",
            f"_kombu.binding_permanent.{queue}",
            f"runs:{{{project}/run_1}}:events",
            f"runs:{{{project}/run_1}}:meta",
        }
        assert client.smembers(f"_kombu.binding.{shared}") == {f"{sep}{sep}w-{theirs}".encode()}
        assert not client.exists(f"_kombu.binding.{emptied}")
        deadlines = client.zrange(redis_hygiene.DEADLINES, 0, -1)
        assert {shared.encode(), their_queue.encode()} <= set(deadlines)
        assert not {queue.encode(), emptied.encode(), gone.encode()} & set(deadlines)
        assert not client.hexists("unacked", f"t-{mine}")
        assert client.zscore("unacked_index", f"t-{mine}") is None
        assert client.hexists("unacked", f"t-{theirs}")
        assert client.exists(f"runs:{{{other_project}/run_1}}:events", their_queue) == 2
    finally:
        redis_hygiene.clean(client, mine, {project})
        redis_hygiene.clean(client, theirs, {other_project})
        client.close()
    assert not client.exists(f"runs:{{{other_project}/run_1}}:meta", f"_kombu.binding.{shared}")


def test_the_projects_of_the_sessions_sqlite_databases_are_found(tmp_path: Path) -> None:
    database = tmp_path / "deeper" / "runs.db"
    migrate.upgrade(f"sqlite:///{database}")
    project = AccessService(create_engine(f"sqlite:///{database}")).create_project("found")
    (tmp_path / "not-a-database.db").write_text("no")
    assert redis_hygiene.sqlite_project_ids(tmp_path) == {project.id}
