"""Property tests of the JSON boundary (hypothesis): arbitrary JSON sent as a run's config or
input, or as a signal's payload, gets a 4xx that stores nothing, or round-trips exactly through
create -> get -> events (and, through a real worker, echo's output). It never gets a 5xx.

The values include lone surrogates (as escapes and as raw bytes), NUL characters, NaN and the
infinities, integers of hundreds of digits, and deep nesting.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runs.domain.definitions import Definition
from runs.domain.text import MAX_DEPTH
from runs.domain.workflows import NodeStatus
from runs.persistence import nodes
from runs.persistence.engine import create_engine
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from tests.conftest import WorkerPool
from tests.support.api_support import Api, Caller, assert_problem, count_runs, new_caller, open_api
from tests.support.workflow_support import EVENT, park, ref_of

# -- values --------------------------------------------------------------------------------

any_character = st.characters(exclude_categories=())  # surrogates and NUL included
# Drawn at random, a lone surrogate is rare: the hostile strings are also drawn on purpose.
hostile_texts = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\udbff\ud800", "\x00", ""])
texts = st.text(any_character, max_size=12) | hostile_texts
numbers = (
    st.integers()
    | st.integers(min_value=-(10**600), max_value=10**600)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**308, 1e308, -0.0])
)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


configs = st.dictionaries(texts, json_values, max_size=4)


def encode(body: dict[str, Any], raw: bool) -> bytes:
    """The body as JSON text: surrogates as ``\\udXXX`` escapes, or (``raw``) as the bytes
    Python's parser turns back into them; NaN and the infinities as their literals."""
    text = json.dumps(body, ensure_ascii=not raw, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def is_clean(value: Any, depth: int = 0) -> bool:
    """What any valid JSON store keeps: valid Unicode, no NUL, finite numbers, bounded depth."""
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return depth < MAX_DEPTH and all(
            is_clean(k) and is_clean(v, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list):
        return depth < MAX_DEPTH and all(is_clean(v, depth + 1) for v in value)
    return True


def same_json(sent: Any, got: Any) -> bool:
    """Equal as JSON: numbers by their decimal value (PostgreSQL keeps 1e300 as an integer)."""
    if isinstance(sent, bool) or isinstance(got, bool) or sent is None or got is None:
        return sent is got or (sent == got and type(sent) is type(got))
    if isinstance(sent, int | float) and isinstance(got, int | float):
        return Decimal(repr(sent)) == Decimal(repr(got))
    if isinstance(sent, list) and isinstance(got, list):
        return len(sent) == len(got) and all(map(same_json, sent, got))
    if isinstance(sent, dict) and isinstance(got, dict):
        return sent.keys() == got.keys() and all(same_json(v, got[k]) for k, v in sent.items())
    return bool(sent == got) and type(sent) is type(got)


BOUNDARY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boundary(database_url: str, redis_url: str) -> Iterator[tuple[Api, Caller, sa.Engine]]:
    """The app on SQLite and on PostgreSQL, each with a project and a token."""
    engine = create_engine(database_url)
    DefinitionCatalog(engine, cache_seconds=0).register(
        [
            Definition(target="task:echo", kind="task"),
            Definition(target="workflow:json-boundary", kind="workflow"),
        ]
    )
    caller = new_caller(AccessService(engine), "json")
    with open_api(database_url, redis_url, "json-boundary") as api:
        yield api, caller, engine
    engine.dispose()


def assert_refused_or_round_trips(
    api: Api, caller: Caller, engine: sa.Engine, field: str, value: Any, raw: bool
) -> None:
    request: dict[str, Any] = {"target": "task:echo", field: value}
    body = {"kind": "task", "owner": {"kind": "project", "id": caller.project.id}}
    stored_before = count_runs(engine, caller.project)
    response = api.client.post(
        "/runs", content=encode({**body, "request": request}, raw), headers=caller.headers
    )
    assert response.status_code < 500, response.text
    if response.status_code != 202:
        assert 400 <= response.status_code < 500
        assert response.headers["content-type"].startswith("application/problem+json")
        assert count_runs(engine, caller.project) == stored_before
        assert not is_clean(value), f"a clean {field} was refused: {response.text}"
        return
    assert is_clean(value), f"an unclean {field} was accepted"
    run = response.json()["run"]
    assert same_json(value, run[field])
    fetched = api.client.get(f"/runs/{run['run_id']}", headers=caller.headers)
    assert fetched.status_code == 200 and same_json(value, fetched.json()[field])
    events = api.client.get(f"/runs/{run['run_id']}/events", headers=caller.headers)
    assert events.status_code == 200


# -- properties ----------------------------------------------------------------------------


@BOUNDARY
@example(config={"\ud800": "x"}, raw=False)
@example(config={"s": "\udfff"}, raw=True)
@example(config={"n": 2**63}, raw=False)
@given(config=configs, raw=st.booleans())
def test_any_config_is_refused_with_a_4xx_or_round_trips_exactly(
    boundary: tuple[Api, Caller, sa.Engine], config: dict[str, Any], raw: bool
) -> None:
    assert_refused_or_round_trips(*boundary, "config", config, raw)


@BOUNDARY
@example(value="\ud800", raw=True)
@example(value=2**63, raw=False)
@example(value=10**308, raw=False)
@given(value=json_values, raw=st.booleans())
def test_any_input_is_refused_with_a_4xx_or_round_trips_exactly(
    boundary: tuple[Api, Caller, sa.Engine], value: Any, raw: bool
) -> None:
    assert_refused_or_round_trips(*boundary, "input", value, raw)


@BOUNDARY
@example(payload={"\ud800": None}, raw=False)
@example(payload=2**63, raw=False)
@given(payload=json_values, raw=st.booleans())
def test_any_signal_payload_is_refused_with_a_4xx_or_becomes_the_node_output_exactly(
    boundary: tuple[Api, Caller, sa.Engine], payload: Any, raw: bool
) -> None:
    api, caller, engine = boundary
    body = {
        "kind": "workflow",
        "owner": {"kind": "project", "id": caller.project.id},
        "request": {"target": "workflow:json-boundary", "workflow_id": "json-boundary"},
    }
    created = api.client.post("/runs", json=body, headers=caller.headers)
    assert created.status_code == 202, created.text
    run_id = created.json()["run"]["run_id"]
    park(engine, run_id)
    response = api.client.post(
        f"/runs/{run_id}/signals",
        content=encode({"event": EVENT, "payload": payload}, raw),
        headers=caller.headers,
    )
    assert response.status_code < 500, response.text
    with engine.connect() as conn:
        hook = nodes.get_nodes(conn, ref_of(engine, run_id))["hook"]
    if response.status_code != 200:
        assert 400 <= response.status_code < 500 and not is_clean(payload)
        assert hook.status is NodeStatus.WAITING
        return
    assert is_clean(payload), "an unclean payload was accepted"
    assert response.json()["resumed"] == ["hook"]
    assert hook.status is NodeStatus.COMPLETED and same_json(payload, hook.output)
    events = api.client.get(f"/runs/{run_id}/events", headers=caller.headers)
    assert events.status_code == 200


def nested_text(depth: int) -> str:
    """``nested(depth)`` as JSON text, written out (json.dumps itself recurses)."""
    opening = "".join("[" if i % 2 else '{"k":' for i in reversed(range(depth)))
    closing = "".join("]" if i % 2 else "}" for i in range(depth))
    return f'{opening}"leaf"{closing}'


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 500, 5000])
@pytest.mark.parametrize("field", ["config", "input"])
def test_deep_nesting_is_refused_with_a_4xx_or_round_trips_exactly(
    boundary: tuple[Api, Caller, sa.Engine], depth: int, field: str
) -> None:
    api, caller, engine = boundary
    value = nested_text(depth)
    if field == "config":
        value = f'{{"d":{value}}}'
    owner = f'{{"kind":"project","id":"{caller.project.id}"}}'
    body = f'{{"kind":"task","owner":{owner},"request":{{"target":"task:echo","{field}":{value}}}}}'
    before = count_runs(engine, caller.project)
    response = api.client.post("/runs", content=body.encode(), headers=caller.headers)
    levels = depth + (field == "config")
    if levels > MAX_DEPTH:
        assert_problem(response, 400, "deep" if depth > 1000 else field)
        assert count_runs(engine, caller.project) == before
        return
    assert response.status_code == 202, response.text
    run = api.client.get(f"/runs/{response.json()['run']['run_id']}", headers=caller.headers)
    expected = nested(depth)
    assert run.json()[field] == ({"d": expected} if field == "config" else expected)


def test_a_number_too_long_to_parse_is_a_4xx(boundary: tuple[Api, Caller, sa.Engine]) -> None:
    api, caller, _ = boundary
    owner = f'{{"kind":"project","id":"{caller.project.id}"}}'
    body = f'{{"kind":"task","owner":{owner},"request":{{"target":"task:echo","input":1{"0" * 5000}}}}}'
    response = api.client.post("/runs", content=body.encode(), headers=caller.headers)
    assert 400 <= response.status_code < 500, response.text


# -- through a real worker -----------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_api(
    worker_pool: WorkerPool, postgres_url: str, redis_url: str, pg_engine: sa.Engine
) -> Iterator[tuple[Api, Caller]]:
    caller = new_caller(AccessService(pg_engine), "json-worker")
    with open_api(
        postgres_url, redis_url, "json-worker", queue=worker_pool.settings.default_queue
    ) as api:
        yield api, caller


@settings(max_examples=25, deadline=None)
@example(config={"s": "\ud800"}, raw=True)
@example(config={"big": 2**64, "small": -(2**63) - 1, "f": 1e308}, raw=False)
@given(config=st.dictionaries(texts, json_values, max_size=4), raw=st.booleans())
def test_a_config_accepted_comes_back_exactly_as_the_output_of_echo(
    worker_api: tuple[Api, Caller], config: dict[str, Any], raw: bool
) -> None:
    api, caller = worker_api
    body = {
        "kind": "task",
        "owner": {"kind": "project", "id": caller.project.id},
        "public_id": f"run_{uuid.uuid4()}",
        "request": {"target": "task:echo", "config": config},
    }
    response = api.client.post("/runs", content=encode(body, raw), headers=caller.headers)
    assert response.status_code in (202, 400), response.text
    if response.status_code == 400:
        assert not is_clean(config)
        return
    run_id = response.json()["run"]["run_id"]
    deadline = time.monotonic() + 20
    while (run := api.client.get(f"/runs/{run_id}", headers=caller.headers).json())[
        "status"
    ] != "completed":
        assert run["status"] in ("pending", "running"), run
        assert time.monotonic() < deadline, run
        time.sleep(0.02)
    assert same_json(config, run["output"])
