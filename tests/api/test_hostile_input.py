"""Hostile input at the API boundary: invalid Unicode, out-of-range integers, failures inside
the server, and the content a read returns (design.md invariant 8).

Each test here reproduces a probe that once broke the service: a lone UTF-16 surrogate that was
stored and then made every read of its run fail, an event cursor past 64 bits, and a 500 that
left the connection to be reset.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from runs.api.app import create_app
from runs.domain.runs import RunRef
from runs.persistence.engine import create_engine
from runs.persistence.tables import runs as runs_table
from runs.services.access import AccessService
from runs.streams.event_log import RedisEventLog
from tests.conftest import base_settings
from tests.support.api_support import (
    Api,
    Caller,
    assert_problem,
    corrupt_event_stream,
    count_runs,
    new_caller,
    open_api,
)
from tests.support.helpers import create_body
from tests.support.redis_hygiene import QUEUE

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(postgres_url: str, redis_url: str, pg_engine: sa.Engine) -> Iterator[Api]:
    with open_api(postgres_url, redis_url, "hostile") as opened:
        yield opened


@pytest.fixture
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "hostile")


def post_raw(api: Api, caller: Caller, body: bytes) -> Any:
    return api.client.post("/runs", content=body, headers=caller.headers)


def raw_create(caller: Caller, request_part: str, top_part: str = "") -> bytes:
    """A create body as bytes, so that escapes and raw byte sequences reach the server as is."""
    owner = f'{{"kind":"project","id":"{caller.project.id}"}}'
    return (
        f'{{"kind":"task","owner":{owner},{top_part}'
        f'"request":{{"target":"task:echo"{"," if request_part else ""}{request_part}}}}}'
    ).encode("utf-8", "surrogatepass")


# -- invalid Unicode in, nothing stored ----------------------------------------------------

LONE_SURROGATES = {
    "an escaped lone surrogate as a value": ('"config":{"s":"\\ud800"}', "", "request.config"),
    "an escaped lone surrogate as a key": ('"config":{"\\udc00":1}', "", "request.config"),
    "a low surrogate before a high one": ('"config":{"s":"\\udc00\\ud800"}', "", "request.config"),
    "raw bytes ED A0 80 in a value": ('"config":{"s":"\ud800"}', "", "request.config"),
    "raw bytes in a key deep down": ('"config":{"a":[{"\udfff":1}]}', "", "request.config"),
    "a lone surrogate in input": ('"input":["ok","\\udbff"]', "", "request.input"),
    "a lone surrogate in the name": ('"name":"\\ud800"', "", "request.name"),
    "a lone surrogate in the public id": ("", '"public_id":"run_\\ud800",', "public_id"),
}


@pytest.mark.parametrize(
    ("request_part", "top_part", "field"),
    list(LONE_SURROGATES.values()),
    ids=list(LONE_SURROGATES),
)
def test_a_lone_surrogate_anywhere_in_a_create_is_refused_naming_the_field_and_stores_nothing(
    api: Api, caller: Caller, pg_engine: sa.Engine, request_part: str, top_part: str, field: str
) -> None:
    queued = api.queued()
    response = post_raw(api, caller, raw_create(caller, request_part, top_part))
    problem = assert_problem(response, 400, field)
    assert "surrogate" in problem["detail"] or "unicode" in problem["detail"]
    assert [e["field"] for e in problem["errors"]] == [field]
    assert count_runs(pg_engine, caller.project) == 0
    assert api.queued() == queued
    listed = api.client.get(f"/projects/{caller.project.id}/runs", headers=caller.headers)
    assert listed.status_code == 200 and listed.json()["data"] == []


def test_invalid_utf8_bytes_are_refused_as_a_body_that_is_not_json(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    body = raw_create(caller, '"config":{"s":"x"}').replace(b'"x"', b'"\xff\xfe"')
    assert_problem(post_raw(api, caller, body), 400, "UTF-8")
    assert count_runs(pg_engine, caller.project) == 0


def test_nul_characters_and_non_finite_numbers_are_refused_naming_the_field(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    for request_part in ('"config":{"s":"a\\u0000b"}', '"config":{"n":NaN}', '"input":Infinity'):
        response = post_raw(api, caller, raw_create(caller, request_part))
        assert_problem(response, 400, "request.")
    assert count_runs(pg_engine, caller.project) == 0


def test_valid_astral_characters_and_escaped_surrogate_pairs_round_trip(
    api: Api, caller: Caller
) -> None:
    body = raw_create(caller, '"config":{"pair":"\\ud83d\\ude00","raw":"\U0001f600","\\u00e9":1}')
    response = post_raw(api, caller, body)
    assert response.status_code == 202, response.text
    run = response.json()["run"]
    assert run["config"] == {"pair": "\U0001f600", "raw": "\U0001f600", "é": 1}
    fetched = api.client.get(f"/runs/{run['run_id']}", headers=caller.headers).json()
    assert fetched["config"] == run["config"]


def test_a_signal_payload_with_a_lone_surrogate_is_refused(api: Api, caller: Caller) -> None:
    run = api.client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    run_id = run.json()["run"]["run_id"]
    body = b'{"event":"go","payload":{"s":"\\ud800"}}'
    response = api.client.post(f"/runs/{run_id}/signals", content=body, headers=caller.headers)
    assert_problem(response, 400, "payload", "surrogate")


# -- stored content never breaks a read ----------------------------------------------------


def test_an_event_stored_with_a_lone_surrogate_is_read_back_replaced_not_as_a_500(
    api: Api, caller: Caller, event_log: RedisEventLog
) -> None:
    """An event appended before payloads were cleaned (a worker of an older version)."""
    run = api.client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    run_id = run.json()["run"]["run_id"]
    key = f"runs:{{{RunRef(caller.project.id, run_id).key}}}:events"
    event_log.client.xadd(
        key, {"t": "NOTE", "p": '{"\\udc00":"\\ud800","n":NaN}', "c": 1}, id="0-1"
    )
    try:
        response = api.client.get(f"/runs/{run_id}/events", headers=caller.headers)
        assert response.status_code == 200, response.text
        assert response.json()["data"][0]["payload"] == {"\ufffd": "\ufffd", "n": None}
    finally:
        event_log.client.delete(key)


@pytest.fixture
def sqlite_api(sqlite_url: str, redis_url: str) -> Iterator[tuple[Api, Caller, sa.Engine]]:
    engine = create_engine(sqlite_url)
    caller = new_caller(AccessService(engine), "legacy")
    with open_api(sqlite_url, redis_url, "hostile-sqlite") as opened:
        yield opened, caller, engine
    engine.dispose()


def test_a_run_stored_with_lone_surrogates_on_sqlite_is_read_listed_and_cancelled_not_500(
    sqlite_api: tuple[Api, Caller, sa.Engine],
) -> None:
    """SQLite keeps what PostgreSQL refuses: a run stored before requests were checked must
    not make its reads, its cancel, or every list page that holds it fail."""
    api, caller, engine = sqlite_api
    now = datetime.now(UTC)
    run_id = f"run_{uuid.uuid4()}"
    with engine.begin() as conn:
        insert_row(
            conn,
            {
                "run_id": run_id,
                "project_id": caller.project.id,
                "kind": "task",
                "status": "pending",
                "owner_kind": "project",
                "owner_id": caller.project.id,
                "root_run_id": run_id,
                "target": "task:echo",
                "queue": QUEUE,
                "artifacts": [],
                "attempt": 0,
                "config": {"\udc00": "\ud800"},
                "created_at": now,
                "updated_at": now,
            },
        )
    got = api.client.get(f"/runs/{run_id}", headers=caller.headers)
    assert got.status_code == 200, got.text
    assert got.json()["config"] == {"\ufffd": "\ufffd"}
    listed = api.client.get(f"/projects/{caller.project.slug}/runs", headers=caller.headers)
    assert listed.status_code == 200 and [r["run_id"] for r in listed.json()["data"]] == [run_id]
    cancelled = api.client.post(f"/runs/{run_id}/cancel", headers=caller.headers)
    assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
    events = api.client.get(f"/runs/{run_id}/events", headers=caller.headers)
    assert events.status_code == 200


# -- integer parameters have bounds --------------------------------------------------------

OUT_OF_RANGE = ["-1", "9007199254740992", "9223372036854775808", "18446744073709551615", "1e3"]


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("state", ["live", "finished"])
def test_an_event_cursor_out_of_range_is_a_400_naming_it(
    api: Api, caller: Caller, value: str, state: str
) -> None:
    run = api.client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    run_id = run.json()["run"]["run_id"]
    if state == "finished":
        api.client.post(f"/runs/{run_id}/cancel", headers=caller.headers)
    response = api.client.get(
        f"/runs/{run_id}/events?after_event_id={value}", headers=caller.headers
    )
    assert_problem(response, 400, "after_event_id")


@pytest.mark.parametrize("state", ["live", "finished"])
def test_the_largest_event_cursor_answers_an_empty_page(
    api: Api, caller: Caller, state: str
) -> None:
    run = api.client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    run_id = run.json()["run"]["run_id"]
    if state == "finished":
        api.client.post(f"/runs/{run_id}/cancel", headers=caller.headers)
    url = f"/runs/{run_id}/events?after_event_id={2**53 - 1}"
    response = api.client.get(url, headers=caller.headers)
    assert response.status_code == 200 and response.json()["data"] == []


@pytest.mark.parametrize("value", ["0", "-5", "101", "18446744073709551616", "x"])
@pytest.mark.parametrize("path", ["/runs/{run_id}/events", "/projects/{slug}/runs"])
def test_a_page_size_out_of_range_is_a_400_naming_it(
    api: Api, caller: Caller, value: str, path: str
) -> None:
    run = api.client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    url = path.format(run_id=run.json()["run"]["run_id"], slug=caller.project.slug)
    response = api.client.get(f"{url}?limit={value}", headers=caller.headers)
    assert_problem(response, 400, "limit")


# -- a failure inside the server -----------------------------------------------------------


@pytest.fixture
def api_without_redis(postgres_url: str) -> Iterator[TestClient]:
    """The app with its Redis (event log and broker) unreachable."""
    settings = base_settings(
        database_url=postgres_url, redis_url="redis://127.0.0.1:1/0", auth_cache_seconds=0
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_storage_out_of_reach_is_a_503_with_retry_after_not_a_500(
    api_without_redis: TestClient, pg_engine: sa.Engine
) -> None:
    client = api_without_redis
    caller = new_caller(AccessService(pg_engine), "away")
    created = client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    assert created.status_code == 202  # the run stays pending; the sweeper sends it later
    run_id = created.json()["run"]["run_id"]
    response = client.get(f"/runs/{run_id}/events", headers=caller.headers)  # a live stream
    problem = assert_problem(response, 503, "try again")
    assert int(response.headers["retry-after"]) >= 1
    assert "request_id" not in problem


def test_a_500_is_problem_json_with_a_request_id_logged_once_and_closes_the_connection(
    api: Api, pg_engine: sa.Engine, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = api.client
    caller = new_caller(AccessService(pg_engine), "boom")
    created = client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    assert created.status_code == 202
    run_id = created.json()["run"]["run_id"]
    caplog.clear()
    with (
        corrupt_event_stream(redis_url, caller.project.id, run_id),
        caplog.at_level(logging.ERROR),
    ):
        response = client.get(f"/runs/{run_id}/events", headers=caller.headers)
    problem = assert_problem(response, 500, "request id")
    request_id = problem["request_id"]
    assert request_id in problem["detail"] and response.headers["x-request-id"] == request_id
    assert response.headers["connection"] == "close"
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert len([r for r in caplog.records if r.exc_info is not None]) == 1


def test_a_body_sent_without_the_json_content_type_is_told_to_send_that_header(
    api: Api, caller: Caller
) -> None:
    body = json.dumps({"name": "n", "target": {"kind": "task", "id": "echo"}, "cron": "0 3 * * *"})
    url = f"/projects/{caller.project.slug}/schedules"
    for sent in ("text/plain", "application/x-www-form-urlencoded"):
        headers = {**caller.headers, "Content-Type": sent}
        response = api.client.post(url, content=body.encode(), headers=headers)
        assert_problem(response, 400, "Content-Type: application/json", sent)
    listed = api.client.get(url, headers=caller.headers).json()["schedules"]
    assert listed == []


def test_a_filter_of_named_values_lists_the_values_it_takes(api: Api, caller: Caller) -> None:
    response = api.client.get(
        f"/projects/{caller.project.slug}/runs?status=bogus", headers=caller.headers
    )
    problem = assert_problem(response, 400, "status")
    assert "cancelled, completed, failed, pending, running, waiting" in problem["detail"]
    assert "(?:" not in problem["detail"]


def insert_row(conn: sa.Connection, values: dict[str, Any]) -> None:
    """A run's row as written by hand (what the store reads back is under test here)."""
    conn.execute(runs_table.insert(), values)
