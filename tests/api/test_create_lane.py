"""The fast lane of POST /runs (``runs.api.creates.CreateFastLane``) against the route it
stands in for: the same bodies through an app whose tokens are never cached (every create
goes to the route) and one whose tokens are (well-formed creates take the lane) answer the
same, and the runs they store are the same."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from httpx import Response

from runs.api.creates import CreateFastLane
from runs.persistence.tables import runs as runs_table
from runs.services.access import AccessService
from tests.support.api_support import Api, Caller, new_caller, open_api
from tests.support.helpers import create_body

VOLATILE = {"run_id", "root_run_id", "created_at", "updated_at"}


@pytest.fixture(scope="module")
def route_api(postgres_url: str, redis_url: str) -> Iterator[Api]:
    with open_api(postgres_url, redis_url, "lane-route", max_input_bytes=1024) as opened:
        yield opened


@pytest.fixture(scope="module")
def lane_api(postgres_url: str, redis_url: str) -> Iterator[Api]:
    with open_api(
        postgres_url, redis_url, "lane", max_input_bytes=1024, auth_cache_seconds=60
    ) as opened:
        yield opened


@pytest.fixture
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "lane")


@pytest.fixture
def lane_taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the lane took each create it saw."""
    taken: list[bool] = []
    real = CreateFastLane._take

    def spy(self: CreateFastLane, scope: Any, received: Any) -> Any:
        found = real(self, scope, received)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(CreateFastLane, "_take", spy)
    return taken


def shape(response: Response) -> tuple[int, str, Any]:
    body = response.json()
    for holder in (body, body.get("run")):
        if isinstance(holder, dict):
            for key in VOLATILE:
                holder.pop(key, None)
    return response.status_code, response.headers["content-type"], body


def stored(engine: sa.Engine, caller: Caller, run_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = dict(
            conn.execute(
                sa.select(runs_table).where(
                    runs_table.c.project_id == caller.project.id, runs_table.c.run_id == run_id
                )
            )
            .mappings()
            .one()
        )
    for key in (*VOLATILE, "available_at", "queue"):
        row.pop(key)
    return row


BODIES: dict[str, dict[str, Any]] = {
    "plain": {},
    "every field": {
        "config": {"text": "é ✓ \u2028", "n": [1, 2.5, None, True], "big": 2**70},
        "name": "a name",
        "batch_id": "b-1",
        "timeout_seconds": 30.0,
        "backoff_limit": 2,
        "runtime_target_kind": "environment",
        "runtime_target_environment_id": "env",
    },
    "unknown target": {"target": "task:nowhere"},
    "input too large": {"config": {"x": "y" * 2000}},
}


@pytest.mark.parametrize("case", sorted(BODIES))
def test_the_lane_answers_and_stores_what_the_route_does(
    route_api: Api,
    lane_api: Api,
    caller: Caller,
    pg_engine: sa.Engine,
    lane_taken: list[bool],
    case: str,
) -> None:
    body = create_body(caller.project, **BODIES[case])
    lane_api.client.get("/whoami", headers=caller.headers)  # the token, authenticated lately
    by_route = route_api.client.post("/runs", json=body, headers=caller.headers)
    lane_taken.clear()
    by_lane = lane_api.client.post("/runs", json=body, headers=caller.headers)
    assert lane_taken == [True]
    assert shape(by_lane) == shape(by_route)
    if by_route.status_code == 202:
        assert stored(pg_engine, caller, by_lane.json()["run"]["run_id"]) == stored(
            pg_engine, caller, by_route.json()["run"]["run_id"]
        )


def test_a_create_repeated_with_its_public_id_is_a_duplicate_on_the_lane_too(
    route_api: Api, lane_api: Api, caller: Caller, lane_taken: list[bool]
) -> None:
    lane_api.client.get("/whoami", headers=caller.headers)
    body = create_body(caller.project) | {"public_id": "run_lane-twice"}
    first = lane_api.client.post("/runs", json=body, headers=caller.headers)
    again = lane_api.client.post("/runs", json=body, headers=caller.headers)
    assert lane_taken == [True, True]
    by_route = route_api.client.post("/runs", json=body, headers=caller.headers)
    assert first.json()["duplicate"] is False
    assert shape(again) == shape(by_route) and again.json()["duplicate"] is True


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"kind": "task"', {"Content-Type": "application/json"}),  # not JSON
        (b'{"kind": "task"}', {"Content-Type": "application/json"}),  # not a create
        (b'{"kind": "task"}', {"Content-Type": "text/plain"}),
        (b"{}", {"Content-Type": "application/json", "Authorization": "Basic abc"}),
    ],
)
def test_what_the_lane_does_not_take_the_route_answers_as_before(
    route_api: Api,
    lane_api: Api,
    caller: Caller,
    lane_taken: list[bool],
    content: bytes,
    headers: dict[str, str],
) -> None:
    lane_api.client.get("/whoami", headers=caller.headers)
    sent = caller.headers | headers
    by_route = route_api.client.post("/runs", content=content, headers=sent)
    lane_taken.clear()
    by_lane = lane_api.client.post("/runs", content=content, headers=sent)
    assert lane_taken == [False]
    assert by_lane.status_code >= 400
    assert shape(by_lane) == shape(by_route)


def test_a_token_not_seen_lately_goes_to_the_route_then_the_lane(
    lane_api: Api, caller: Caller, lane_taken: list[bool]
) -> None:
    body = create_body(caller.project)
    assert lane_api.client.post("/runs", json=body, headers=caller.headers).status_code == 202
    assert lane_api.client.post("/runs", json=body, headers=caller.headers).status_code == 202
    assert lane_taken == [False, True]


def test_the_lane_counts_its_creates_under_the_route(
    lane_api: Api, caller: Caller, lane_taken: list[bool]
) -> None:
    def counted() -> float:
        text = lane_api.client.get("/metrics").text
        line = next(
            (
                line
                for line in text.splitlines()
                if line.startswith("runs_http_requests_total{")
                and 'route="/runs"' in line
                and 'method="POST"' in line
                and 'status="202"' in line
            ),
            None,
        )
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    lane_api.client.get("/whoami", headers=caller.headers)
    before = counted()
    lane_api.client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    assert lane_taken == [True]
    assert counted() == before + 1
