"""What the API test modules share: the app under a TestClient, and callers with tokens."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from httpx import Response

from runs.api.app import create_app
from runs.domain.projects import Project
from runs.persistence.tables import runs as runs_table
from runs.services.access import AccessService
from tests.conftest import base_settings
from tests.support.redis_hygiene import own


@dataclass
class Api:
    client: TestClient
    queue: str
    broker: redis.Redis

    def queued(self) -> int:
        """Jobs waiting on this app's queue in the Redis broker (nothing consumes them)."""
        return int(self.broker.llen(self.queue))

    def newest_job(self) -> tuple[str, list[Any]]:
        """(job name, args) of the job sent last: kombu pushes to the head of the list."""
        raw = self.broker.lindex(self.queue, 0)
        assert raw is not None, "no job on the queue"
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        return message["headers"]["task"], args


@dataclass
class Caller:
    """A project and a bearer token of it."""

    project: Project
    token: str
    token_id: str

    @property
    def headers(self) -> dict[str, str]:
        # The official client sends Content-Type: application/json on every request (§1).
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


@contextmanager
def open_api(
    database_url: str, redis_url: str, prefix: str, *, queue: str | None = None, **limits: Any
) -> Iterator[Api]:
    """The app on the test database, sending jobs to a queue of its own that nothing consumes
    (or to ``queue``, a worker pool's)."""
    own_queue = queue is None
    queue = queue or own(prefix)
    settings = base_settings(
        database_url=database_url,
        redis_url=redis_url,
        default_queue=queue,
        **({"auth_cache_seconds": 0} | limits),
    )
    broker = redis.Redis.from_url(redis_url)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield Api(client=client, queue=queue, broker=broker)
    if own_queue:
        broker.delete(queue)
    broker.close()


def new_caller(access: AccessService, prefix: str) -> Caller:
    project = access.create_project(f"{prefix}-{uuid.uuid4().hex[:12]}")
    token, secret = access.create_token(project.id)
    return Caller(project=project, token=secret, token_id=token.id)


def assert_problem(response: Response, status: int, *words: str) -> dict[str, Any]:
    """An application/problem+json answer with the status and a detail naming the problem."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    for word in words:
        assert word.lower() in body["detail"].lower(), f"{word!r} not in {body['detail']!r}"
    return body


def count_runs(engine: sa.Engine, project: Project) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).where(runs_table.c.project_id == project.id)
        return int(conn.execute(query).scalar_one())


@contextmanager
def corrupt_event_stream(redis_url: str, project_id: str, run_id: str) -> Iterator[None]:
    """A live run's event stream made a plain string while the block runs: reading it fails
    with an error the server does not expect (Redis answers WRONGTYPE), which is a 500."""
    client = redis.Redis.from_url(redis_url)
    key = f"runs:{{{project_id}/{run_id}}}:events"
    try:
        client.set(key, "not a stream", ex=3600)
        yield
    finally:
        client.delete(key)
        client.close()
