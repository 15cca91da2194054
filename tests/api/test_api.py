"""The HTTP API against the real PostgreSQL, Redis and Celery broker (contract.md §1-§9, §11, §14).

The app is built with ``create_app`` and driven through ``TestClient`` with its lifespan, so the
real ``CeleryDispatcher`` sends jobs to the Redis broker on a random queue that nothing consumes:
every run created here stays pending unless a test cancels it.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from httpx import Response

from runs.persistence.tables import runs as runs_table
from runs.schemas.runs import CancelRunOut, CreateRunOut, RunEventListOut, RunListOut, RunOut
from runs.services.access import AccessService
from tests.support.api_support import Api, Caller, assert_problem, count_runs, new_caller, open_api
from tests.support.helpers import create_body

MAX_BODY_BYTES = 8192
MAX_INPUT_BYTES = 1024
MAX_PAGE_SIZE = 100

# contract.md §5.1: every key must be present on every Run.
RUN_KEYS = (
    "run_id",
    "kind",
    "status",
    "owner",
    "parent_run_id",
    "root_run_id",
    "waiting_reason",
    "metadata",
    "target",
    "workflow_id",
    "schedule_id",
    "batch_id",
    "runtime_target_kind",
    "runtime_target_environment_id",
    "runtime_target_branch_id",
    "input",
    "config",
    "output",
    "error",
    "logs",
    "artifacts",
    "duration_ms",
    "exit_code",
    "start_mode",
    "timeout_seconds",
    "backoff_limit",
    "trigger_kind",
    "trigger_id",
    "created_by",
    "updated_at",
    "created_at",
    "started_at",
    "completed_at",
)
# Nullable keys a fresh pending task run, created with only target and config, leaves null.
NULL_ON_A_FRESH_TASK_RUN = (
    "parent_run_id",
    "waiting_reason",
    "metadata",
    "workflow_id",
    "schedule_id",
    "batch_id",
    "runtime_target_kind",
    "runtime_target_environment_id",
    "runtime_target_branch_id",
    "input",
    "output",
    "logs",
    "duration_ms",
    "exit_code",
    "start_mode",
    "timeout_seconds",
    "backoff_limit",
    "started_at",
    "completed_at",
)
PAGE_INFO_KEYS = {"self", "first", "next", "prev"}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(postgres_url: str, redis_url: str, pg_engine: sa.Engine) -> Iterator[Api]:
    with open_api(
        postgres_url,
        redis_url,
        "api-test",
        max_body_bytes=MAX_BODY_BYTES,
        max_input_bytes=MAX_INPUT_BYTES,
        max_page_size=MAX_PAGE_SIZE,
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def access_service(pg_engine: sa.Engine) -> AccessService:
    return AccessService(pg_engine)


@pytest.fixture
def caller(access_service: AccessService) -> Caller:
    """A new project per test: projects are walls, so tests never see each other's runs."""
    return new_caller(access_service, "api")


@pytest.fixture
def stranger(access_service: AccessService) -> Caller:
    return new_caller(access_service, "other")


# -- helpers -------------------------------------------------------------------------------


def create_run(api: Api, caller: Caller, target: str = "task:echo", **body: Any) -> dict[str, Any]:
    payload = create_body(caller.project, target)
    payload.update(body)
    response = api.client.post("/runs", json=payload, headers=caller.headers)
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()["run"]
    return run


def list_runs(api: Api, caller: Caller, query: str = "", ref: str | None = None) -> Response:
    reference = ref if ref is not None else caller.project.slug
    response: Response = api.client.get(
        f"/projects/{reference}/runs{query}", headers=caller.headers
    )
    return response


def run_ids(response: Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["run_id"] for r in response.json()["data"]]


def assert_iso_timestamp(value: Any) -> None:
    assert isinstance(value, str)
    assert datetime.fromisoformat(value).tzinfo is not None, value


def assert_wire_run(run: dict[str, Any]) -> None:
    """The Run shape the official client validates (§5.1, §14)."""
    missing = [k for k in RUN_KEYS if k not in run]
    assert not missing, f"Run lacks {missing}"
    RunOut.model_validate(run)
    assert isinstance(run["root_run_id"], str)
    assert isinstance(run["artifacts"], list)
    error = run["error"]
    assert error is None or (isinstance(error, dict) and isinstance(error["message"], str))
    if isinstance(error, dict):
        for optional in ("code", "detail"):
            assert error.get(optional, "absent") is not None, f"error.{optional} is null"
    assert_iso_timestamp(run["created_at"])
    assert_iso_timestamp(run["updated_at"])
    for key in ("started_at", "completed_at"):
        if run[key] is not None:
            assert_iso_timestamp(run[key])


def assert_page_info(body: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = body["page_info"]
    assert set(info) == PAGE_INFO_KEYS
    assert info["first"] is None
    assert info["next"] is None or isinstance(info["next"], str)
    return info


# -- POST /runs ----------------------------------------------------------------------------


def test_creating_a_run_answers_202_with_the_complete_pending_run(api: Api, caller: Caller) -> None:
    queued_before = api.queued()
    response = api.client.post("/runs", json=create_body(caller.project), headers=caller.headers)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    CreateRunOut.model_validate(body)
    assert body["accepted"] is True and body["duplicate"] is False
    run = body["run"]
    assert_wire_run(run)
    assert run["run_id"].startswith("run_")
    assert run["kind"] == "task" and run["status"] == "pending"
    assert run["owner"] == {"kind": "project", "id": caller.project.id}
    assert run["root_run_id"] == run["run_id"]
    assert run["target"] == "task:echo" and run["config"] == {"hello": "world"}
    assert run["artifacts"] == [] and run["error"] is None
    assert {k: run[k] for k in NULL_ON_A_FRESH_TASK_RUN} == dict.fromkeys(NULL_ON_A_FRESH_TASK_RUN)
    assert api.queued() == queued_before + 1, "the job was not sent to the broker"
    fetched = api.client.get(f"/runs/{run['run_id']}", headers=caller.headers)
    assert fetched.status_code == 200 and fetched.json() == run


def test_a_run_echoes_the_request_fields_it_was_created_with(api: Api, caller: Caller) -> None:
    run = create_run(
        api,
        caller,
        request={
            "target": "task:echo",
            "name": "Nightly import",
            "batch_id": "batch-7",
            "runtime_target_kind": "preview_branch",
            "runtime_target_environment_id": None,
            "runtime_target_branch_id": "branch-1",
            "config": {"since": "2026-01-01"},
            "timeout_seconds": 900,
            "backoff_limit": 0,
        },
    )
    assert_wire_run(run)
    assert (run["batch_id"], run["runtime_target_kind"], run["runtime_target_branch_id"]) == (
        "batch-7",
        "preview_branch",
        "branch-1",
    )
    assert run["runtime_target_environment_id"] is None
    assert (run["timeout_seconds"], run["backoff_limit"]) == (900, 0)
    assert run["config"] == {"since": "2026-01-01"}


def test_owner_id_may_be_the_project_slug_and_the_run_carries_the_uuid(
    api: Api, caller: Caller
) -> None:
    run = create_run(api, caller, owner={"kind": "project", "id": caller.project.slug})
    assert run["owner"] == {"kind": "project", "id": caller.project.id}


def test_a_repeated_public_id_is_a_duplicate_that_returns_the_same_run(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    public_id = f"run_{uuid.uuid4()}"
    body = create_body(caller.project) | {"public_id": public_id}
    queued_before = api.queued()
    first = api.client.post("/runs", json=body, headers=caller.headers)
    again = api.client.post("/runs", json=body, headers=caller.headers)
    assert (first.status_code, again.status_code) == (202, 202)
    CreateRunOut.model_validate(again.json())
    assert first.json()["duplicate"] is False and again.json()["duplicate"] is True
    assert again.json()["accepted"] is True
    assert first.json()["run"]["run_id"] == public_id
    assert again.json()["run"] == first.json()["run"]
    assert count_runs(pg_engine, caller.project) == 1
    assert api.queued() == queued_before + 1, "a duplicate must not send a second job"


def test_unknown_fields_in_the_body_are_ignored_and_not_stored(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    body = create_body(caller.project)
    body["surprise_top"] = {"x": 1}
    body["metadata"] = {"surprise_meta": True}
    body["owner"]["surprise_owner"] = 2
    body["request"]["surprise_request"] = "yes"
    response = api.client.post("/runs", json=body, headers=caller.headers)
    assert response.status_code == 202, response.text
    run = response.json()["run"]
    assert "surprise" not in response.text
    assert run["metadata"] is None
    with pg_engine.connect() as conn:
        row = conn.execute(runs_table.select().where(runs_table.c.run_id == run["run_id"])).one()
    assert "surprise" not in repr(tuple(row))


# -- invariant 8: bad input gets a clear error and changes nothing --------------------------

Make = Callable[[Caller, Caller], dict[str, Any]]


def _post(json: Any = None, **request: Any) -> Make:
    """A POST /runs with the caller's token and ``create_body`` changed by ``request``."""

    def make(caller: Caller, stranger: Caller) -> dict[str, Any]:
        body = create_body(caller.project)
        body["request"].update(request)
        return {"method": "POST", "url": "/runs", "json": body if json is None else json}

    return make


def _body(change: Callable[[dict[str, Any], Caller], None]) -> Make:
    def make(caller: Caller, stranger: Caller) -> dict[str, Any]:
        body = create_body(caller.project)
        change(body, stranger)
        return {"method": "POST", "url": "/runs", "json": body}

    return make


def _raw(content: bytes) -> Make:
    return lambda caller, stranger: {"method": "POST", "url": "/runs", "content": content}


def _chunked(content: bytes) -> Make:
    """A body sent without Content-Length (Transfer-Encoding: chunked)."""

    def make(caller: Caller, stranger: Caller) -> dict[str, Any]:
        chunks = [content[i : i + 1000] for i in range(0, len(content), 1000)]
        return {"method": "POST", "url": "/runs", "content": iter(chunks)}

    return make


def _raw_for_owner(template: bytes) -> Make:
    """A raw body with the caller's project id in place of ``%s``."""

    def make(caller: Caller, stranger: Caller) -> dict[str, Any]:
        return {"method": "POST", "url": "/runs", "content": template % caller.project.id.encode()}

    return make


def _get(url: str) -> Make:
    return lambda caller, stranger: {"method": "GET", "url": url.format(slug=caller.project.slug)}


def _cancel(run_id: str) -> Make:
    return lambda caller, stranger: {"method": "POST", "url": f"/runs/{run_id}/cancel"}


def _without_target(body: dict[str, Any], _: Caller) -> None:
    del body["request"]["target"]


def _owned_by(body: dict[str, Any], stranger: Caller) -> None:
    body["owner"]["id"] = stranger.project.id


def _kind(kind: str, target: str) -> Callable[[dict[str, Any], Caller], None]:
    def change(body: dict[str, Any], _: Caller) -> None:
        body["kind"] = kind
        body["request"]["target"] = target

    return change


def _set(key: str, value: Any) -> Callable[[dict[str, Any], Caller], None]:
    def change(body: dict[str, Any], _: Caller) -> None:
        body[key] = value

    return change


NAN_BODY = (
    b'{"kind": "task", "owner": {"kind": "project", "id": "%s"},'
    b' "request": {"target": "task:echo", "config": {"n": NaN}}}'
)
INFINITY_BODY = (
    b'{"kind": "task", "owner": {"kind": "project", "id": "%s"},'
    b' "request": {"target": "task:echo", "input": -Infinity}}'
)
OVERSIZED = b'{"kind": "task", "padding": "' + b"x" * MAX_BODY_BYTES + b'"}'

BAD_REQUESTS: list[tuple[str, Make, int, tuple[str, ...]]] = [
    ("malformed JSON", _raw(b'{"kind": "task", "owner": '), 400, ("JSON",)),
    ("a body that is not an object", _post(json=["task:echo"]), 400, ("body",)),
    ("a JSON null body", _raw(b"null"), 400, ("body",)),
    ("no body at all", _raw(b""), 400, ("body",)),
    ("no request.target", _body(_without_target), 400, ("request.target",)),
    ("a target of the wrong form", _post(target="echo"), 400, ("target",)),
    ("kind task with a workflow target", _post(target="workflow:x"), 400, ("workflow:x",)),
    ("an unknown target", _post(target="task:no-such-task"), 422, ("task:no-such-task",)),
    ("an unsupported kind eval", _body(_kind("eval", "eval:x")), 422, ("eval",)),
    ("an unsupported kind agent", _body(_kind("agent", "task:echo")), 422, ("agent",)),
    ("an unknown kind", _body(_kind("batch", "task:echo")), 400, ("kind",)),
    ("timeout_seconds not a number", _post(timeout_seconds="abc"), 400, ("timeout_seconds",)),
    ("a negative backoff_limit", _post(backoff_limit=-1), 400, ("backoff_limit",)),
    (
        "a timeout above the server's maximum",
        _post(timeout_seconds=100_000),
        400,
        ("request.timeout_seconds", "21600"),
    ),
    ("config not an object", _post(config=["a"]), 400, ("config",)),
    ("an oversized config", _post(config={"blob": "x" * MAX_INPUT_BYTES}), 413, ("config",)),
    ("an over-limit raw body", _raw(OVERSIZED), 413, (str(MAX_BODY_BYTES),)),
    ("an over-limit chunked body", _chunked(OVERSIZED), 413, (str(MAX_BODY_BYTES),)),
    ("owner.id of another project", _body(_owned_by), 404, ("project",)),
    ("an unknown owner.kind", _body(_set("owner", {"kind": "team", "id": "x"})), 400, ("owner",)),
    ("a malformed public_id", _body(_set("public_id", "run id!")), 400, ("public_id",)),
    ("a public_id ending in a newline", _body(_set("public_id", "run_x\n")), 400, ("public_id",)),
    ("a target ending in a newline", _post(target="task:echo\n"), 400, ("target",)),
    ("a NUL in config", _post(config={"a": [1, {"b": "x\x00"}]}), 400, ("config", "NUL")),
    ("a NUL in a config key", _post(config={"\x00": 1}), 400, ("config", "NUL")),
    ("a NUL in input", _post(input=["\x00"]), 400, ("input", "NUL")),
    ("a NUL in name", _post(name="a\x00b"), 400, ("name", "NUL")),
    ("a NUL in parent_run_id", _body(_set("parent_run_id", "run_\x00")), 400, ("parent_run_id",)),
    ("NaN in config", _raw_for_owner(NAN_BODY), 400, ("config", "nan")),
    ("Infinity in input", _raw_for_owner(INFINITY_BODY), 400, ("input", "inf")),
    ("an unknown parent run", _body(_set("parent_run_id", "run_nope")), 404, ("run_nope",)),
    ("a bad list cursor", _get("/projects/{slug}/runs?cursor=bogus"), 400, ("cursor",)),
    ("an unknown status filter", _get("/projects/{slug}/runs?status=done"), 400, ("status",)),
    ("an unknown kind filter", _get("/projects/{slug}/runs?kind=job"), 400, ("kind",)),
    ("list limit 0", _get("/projects/{slug}/runs?limit=0"), 400, ("limit",)),
    (
        "list limit over the maximum",
        _get(f"/projects/{{slug}}/runs?limit={MAX_PAGE_SIZE + 1}"),
        400,
        ("limit",),
    ),
    ("list limit not a number", _get("/projects/{slug}/runs?limit=ten"), 400, ("limit",)),
    (
        "root_only together with parent_run_id",
        _get("/projects/{slug}/runs?root_only=true&parent_run_id=run_x"),
        400,
        ("root_only", "parent_run_id"),
    ),
    ("an unknown project", _get("/projects/no-such-project/runs"), 404, ("no-such-project",)),
    ("an unknown run", _get("/runs/run_nope"), 404, ("run_nope",)),
    ("a NUL in a run id", _get("/runs/run_%00x"), 404, ("not found",)),
    ("a NUL in a run id of events", _get("/runs/run_%00x/events"), 404, ("not found",)),
    ("a NUL in a run id to cancel", _cancel("run_%00x"), 404, ("not found",)),
    (
        "a NUL in a parent_run_id filter",
        _get("/projects/{slug}/runs?parent_run_id=run_%00"),
        400,
        ("parent_run_id",),
    ),
    ("a NUL in a target filter", _get("/projects/{slug}/runs?target=task:%00"), 400, ("target",)),
    ("a malformed target filter", _get("/projects/{slug}/runs?target=echo"), 400, ("target",)),
]


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [pytest.param(make, status, words, id=name) for name, make, status, words in BAD_REQUESTS],
)
def test_bad_input_gets_a_clear_problem_and_changes_nothing(
    api: Api,
    caller: Caller,
    stranger: Caller,
    pg_engine: sa.Engine,
    make: Make,
    status: int,
    words: tuple[str, ...],
) -> None:
    existing = create_run(api, caller)
    before = (count_runs(pg_engine, caller.project), api.queued())
    response = api.client.request(headers=caller.headers, **make(caller, stranger))
    assert_problem(response, status, *words)
    assert (count_runs(pg_engine, caller.project), api.queued()) == before
    after = api.client.get(f"/runs/{existing['run_id']}", headers=caller.headers).json()
    assert after == existing


@pytest.mark.parametrize(
    ("after_event_id", "limit", "word"),
    [
        ("-1", "10", "after_event_id"),
        ("x", "10", "after_event_id"),
        ("0", "0", "limit"),
        ("0", str(MAX_PAGE_SIZE + 1), "limit"),
    ],
)
def test_bad_event_paging_parameters_are_400(
    api: Api, caller: Caller, after_event_id: str, limit: str, word: str
) -> None:
    run = create_run(api, caller)
    response = api.client.get(
        f"/runs/{run['run_id']}/events?after_event_id={after_event_id}&limit={limit}",
        headers=caller.headers,
    )
    assert_problem(response, 400, word)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer ", "Bearer runs_not-a-real-token", "Basic dXNlcjpwYXNz", "runs_bare"],
    ids=["missing", "empty", "unknown", "basic", "no-scheme"],
)
def test_a_missing_or_bad_token_is_401_with_www_authenticate_and_changes_nothing(
    api: Api, caller: Caller, pg_engine: sa.Engine, authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    before = (count_runs(pg_engine, caller.project), api.queued())
    response = api.client.post("/runs", json=create_body(caller.project), headers=headers)
    assert_problem(response, 401, "token")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert (count_runs(pg_engine, caller.project), api.queued()) == before
    for url in ("/runs/run_x", f"/projects/{caller.project.slug}/runs", "/definitions", "/whoami"):
        assert_problem(api.client.get(url, headers=headers), 401)


def test_whoami_names_the_tokens_project_and_only_it(
    api: Api, caller: Caller, stranger: Caller
) -> None:
    """What the web view asks after sign-in, to find the project reference of its routes."""
    mine = api.client.get("/whoami", headers=caller.headers)
    theirs = api.client.get("/whoami", headers=stranger.headers)
    assert mine.status_code == 200, mine.text
    project = caller.project
    assert mine.json() == {
        "project": {"id": project.id, "slug": project.slug, "name": project.name}
    }
    assert theirs.json()["project"]["id"] == stranger.project.id


# -- invariant 6: projects are walls --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/runs/{run_id}"),
        ("GET", "/runs/{run_id}/events"),
        ("GET", "/runs/{run_id}/nodes"),
        ("POST", "/runs/{run_id}/cancel"),
        ("GET", "/projects/{slug}/runs"),
        ("GET", "/projects/{project_id}/runs"),
    ],
)
def test_another_projects_run_or_project_is_404_not_403(
    api: Api, caller: Caller, stranger: Caller, method: str, path: str
) -> None:
    theirs = create_run(api, stranger)
    url = path.format(
        run_id=theirs["run_id"], slug=stranger.project.slug, project_id=stranger.project.id
    )
    response = api.client.request(method, url, headers=caller.headers)
    body = assert_problem(response, 404)
    assert theirs["run_id"] not in str(body.get("errors", ""))
    unchanged = api.client.get(f"/runs/{theirs['run_id']}", headers=stranger.headers)
    assert unchanged.json() == theirs


def test_a_public_id_used_in_another_project_is_answered_like_a_free_one(
    api: Api, caller: Caller, stranger: Caller
) -> None:
    """Run ids belong to their project: nothing tells a caller that another project holds an
    id, and taking it there leaves the other project's run alone."""
    theirs = create_run(api, stranger, public_id=f"run_{uuid.uuid4()}")
    free = api.client.post(
        "/runs",
        json=create_body(caller.project) | {"public_id": f"run_{uuid.uuid4()}"},
        headers=caller.headers,
    )
    taken = api.client.post(
        "/runs",
        json=create_body(caller.project, config={"mine": True}) | {"public_id": theirs["run_id"]},
        headers=caller.headers,
    )
    assert (free.status_code, taken.status_code) == (202, 202)
    assert free.json()["duplicate"] is False and taken.json()["duplicate"] is False
    mine = taken.json()["run"]
    assert mine["run_id"] == theirs["run_id"] and mine["config"] == {"mine": True}
    assert mine["owner"]["id"] == caller.project.id
    assert stranger.project.id not in taken.text
    again = api.client.get(f"/runs/{theirs['run_id']}", headers=stranger.headers).json()
    assert again == theirs
    assert api.client.get(f"/runs/{theirs['run_id']}", headers=caller.headers).json() == mine
    # A repeat inside the caller's own project is the duplicate.
    repeat = api.client.post(
        "/runs",
        json=create_body(caller.project) | {"public_id": theirs["run_id"]},
        headers=caller.headers,
    )
    assert repeat.json()["duplicate"] is True and repeat.json()["run"]["config"] == {"mine": True}


def test_another_projects_run_cannot_be_a_parent_or_a_parent_filter(
    api: Api, caller: Caller, stranger: Caller, pg_engine: sa.Engine
) -> None:
    theirs = create_run(api, stranger)
    body = create_body(caller.project) | {"parent_run_id": theirs["run_id"]}
    response = api.client.post("/runs", json=body, headers=caller.headers)
    assert_problem(response, 404, theirs["run_id"])
    assert count_runs(pg_engine, caller.project) == 0
    create_run(api, stranger, parent_run_id=theirs["run_id"])
    assert run_ids(list_runs(api, caller, f"?parent_run_id={theirs['run_id']}")) == []


def test_a_revoked_token_is_401(api: Api, caller: Caller, access_service: AccessService) -> None:
    run = create_run(api, caller)
    access_service.revoke_token(caller.token_id)
    response = api.client.get(f"/runs/{run['run_id']}", headers=caller.headers)
    assert_problem(response, 401, "revoked")
    assert response.headers["www-authenticate"].startswith("Bearer")


# -- GET /projects/{ref}/runs ---------------------------------------------------------------


def test_listing_by_slug_and_by_uuid_gives_the_same_runs_newest_first(
    api: Api, caller: Caller
) -> None:
    created = [create_run(api, caller)["run_id"] for _ in range(3)]
    by_slug = list_runs(api, caller, ref=caller.project.slug)
    by_uuid = list_runs(api, caller, ref=caller.project.id)
    RunListOut.model_validate(by_slug.json())
    assert by_slug.json() == by_uuid.json()
    for run in by_slug.json()["data"]:
        assert_wire_run(run)
    assert run_ids(by_slug) == created[::-1]
    info = assert_page_info(by_slug.json())
    assert info["next"] is None


def test_listing_orders_by_created_at_then_run_id_descending(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    ids = [create_run(api, caller)["run_id"] for _ in range(4)]
    same_moment = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    with pg_engine.begin() as conn:  # a tie on created_at is broken by run_id
        conn.execute(
            runs_table.update().where(runs_table.c.run_id.in_(ids)).values(created_at=same_moment)
        )
    newer = create_run(api, caller)["run_id"]
    assert run_ids(list_runs(api, caller)) == [newer, *sorted(ids, reverse=True)]


def test_cursor_paging_visits_every_run_once(api: Api, caller: Caller) -> None:
    created = [create_run(api, caller)["run_id"] for _ in range(5)]
    seen: list[str] = []
    pages = 0
    query = "?limit=2"
    while True:
        response = list_runs(api, caller, query)
        pages += 1
        seen.extend(run_ids(response))
        info = assert_page_info(response.json())
        if info["next"] is None:
            break
        query = f"?cursor={info['next']}&limit=2"
        assert pages < 10
    assert pages == 3
    assert seen == created[::-1]


def test_list_filters_by_status_kind_and_target(api: Api, caller: Caller) -> None:
    echo = create_run(api, caller, "task:echo")["run_id"]
    sleep = create_run(api, caller, "task:sleep")["run_id"]
    fail = create_run(api, caller, "task:fail")["run_id"]
    cancel = api.client.post(f"/runs/{sleep}/cancel", headers=caller.headers)
    assert cancel.status_code == 200

    assert run_ids(list_runs(api, caller, "?status=cancelled")) == [sleep]
    assert run_ids(list_runs(api, caller, "?status=pending")) == [fail, echo]
    assert run_ids(list_runs(api, caller, "?status=pending,cancelled")) == [fail, sleep, echo]
    assert run_ids(list_runs(api, caller, "?status=pending&status=cancelled")) == [
        fail,
        sleep,
        echo,
    ]
    assert run_ids(list_runs(api, caller, "?status=completed")) == []
    assert run_ids(list_runs(api, caller, "?kind=task")) == [fail, sleep, echo]
    assert run_ids(list_runs(api, caller, "?kind=workflow,eval")) == []
    assert run_ids(list_runs(api, caller, "?target=task:echo")) == [echo]
    assert run_ids(list_runs(api, caller, "?target=task:echo,task:fail")) == [fail, echo]
    assert run_ids(list_runs(api, caller, "?target=task:echo&target=task:sleep")) == [sleep, echo]
    # AND across filters
    assert run_ids(list_runs(api, caller, "?status=pending&target=task:sleep")) == []


def test_list_filters_root_only_and_parent_run_id(api: Api, caller: Caller) -> None:
    root = create_run(api, caller)
    child = create_run(api, caller, parent_run_id=root["run_id"])
    grandchild = create_run(api, caller, parent_run_id=child["run_id"])
    other_root = create_run(api, caller)
    assert child["parent_run_id"] == root["run_id"]
    assert child["root_run_id"] == root["run_id"]
    assert grandchild["root_run_id"] == root["run_id"]

    roots = run_ids(list_runs(api, caller, "?root_only=true"))
    assert roots == [other_root["run_id"], root["run_id"]]
    children = run_ids(list_runs(api, caller, f"?parent_run_id={root['run_id']}"))
    assert children == [child["run_id"]]
    both = list_runs(api, caller, f"?root_only=true&parent_run_id={root['run_id']}")
    assert_problem(both, 400, "root_only")


def test_a_cursor_from_a_filtered_listing_keeps_paging_with_the_same_filter(
    api: Api, caller: Caller
) -> None:
    echoes = [create_run(api, caller, "task:echo")["run_id"] for _ in range(3)]
    create_run(api, caller, "task:sleep")
    first = list_runs(api, caller, "?target=task:echo&limit=2")
    cursor = first.json()["page_info"]["next"]
    assert isinstance(cursor, str)
    second = list_runs(api, caller, f"?target=task:echo&limit=2&cursor={cursor}")
    assert run_ids(first) + run_ids(second) == echoes[::-1]
    assert second.json()["page_info"]["next"] is None


# -- events and cancel ----------------------------------------------------------------------


def test_a_pending_run_has_no_events(api: Api, caller: Caller) -> None:
    run = create_run(api, caller)
    response = api.client.get(f"/runs/{run['run_id']}/events", headers=caller.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    RunEventListOut.model_validate(body)
    assert body["data"] == []
    assert assert_page_info(body)["next"] is None
    paged = api.client.get(
        f"/runs/{run['run_id']}/events?after_event_id=0&limit=10", headers=caller.headers
    )
    assert paged.status_code == 200 and paged.json() == body


def test_cancel_without_a_body_cancels_a_pending_run_once(api: Api, caller: Caller) -> None:
    run = create_run(api, caller)
    url = f"/runs/{run['run_id']}/cancel"
    # The official client sends Content-Type: application/json and no body (§14.6).
    response = api.client.post(url, headers=caller.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    CancelRunOut.model_validate(body)
    assert body["cancelled"] is True
    cancelled = body["run"]
    assert_wire_run(cancelled)
    assert cancelled["status"] == "cancelled"
    assert_iso_timestamp(cancelled["completed_at"])
    assert cancelled["error"]["code"] == "cancelled"
    assert isinstance(cancelled["error"]["message"], str) and cancelled["error"]["message"]
    assert cancelled["started_at"] is None

    again = api.client.post(url, headers=caller.headers)
    assert again.status_code == 200, again.text
    assert again.json() == {"cancelled": False, "run": cancelled}
    fetched = api.client.get(f"/runs/{run['run_id']}", headers=caller.headers)
    assert fetched.json() == cancelled

    events = api.client.get(f"/runs/{run['run_id']}/events", headers=caller.headers).json()
    RunEventListOut.model_validate(events)
    assert [e["event_type"] for e in events["data"]] == ["RUN_ERROR"]
    event = events["data"][0]
    assert isinstance(event["event_id"], int) and event["event_id"] > 0
    assert_iso_timestamp(event["created_at"])
    assert assert_page_info(events)["next"] is None
    after_it = api.client.get(
        f"/runs/{run['run_id']}/events?after_event_id={event['event_id']}",
        headers=caller.headers,
    )
    assert after_it.json()["data"] == []


# -- HTTP hygiene ---------------------------------------------------------------------------


def test_no_route_redirects_a_trailing_slash(api: Api, caller: Caller) -> None:
    run = create_run(api, caller)
    for method, url in [
        ("GET", f"/runs/{run['run_id']}/"),
        ("GET", f"/runs/{run['run_id']}/events/"),
        ("POST", f"/runs/{run['run_id']}/cancel/"),
        ("GET", f"/projects/{caller.project.slug}/runs/"),
        ("POST", "/runs/"),
    ]:
        response = api.client.request(method, url, headers=caller.headers)
        assert not 300 <= response.status_code < 400, (method, url, response.status_code)
        assert "location" not in response.headers
        assert_problem(response, 404)
    still_pending = api.client.get(f"/runs/{run['run_id']}", headers=caller.headers)
    assert still_pending.json()["status"] == "pending"


def test_no_route_answers_204(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    statuses = {
        status
        for operations in spec["paths"].values()
        for operation in operations.values()
        for status in operation.get("responses", {})
    }
    assert "204" not in statuses
    assert all(not route_status.startswith("3") for route_status in statuses)


def test_health_readiness_and_openapi(api: Api) -> None:
    healthz = api.client.get("/healthz")
    assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}
    readyz = api.client.get("/readyz")
    assert readyz.status_code == 200, readyz.text
    assert readyz.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    spec = api.client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "/runs" in paths and "post" in paths["/runs"]
    assert "/projects/{project_reference}/runs" in paths
    for path in ("/runs/{run_id}", "/runs/{run_id}/events", "/runs/{run_id}/cancel"):
        assert path in paths


def test_an_unknown_route_or_method_is_problem_json(api: Api, caller: Caller) -> None:
    assert_problem(api.client.get("/nothing-here", headers=caller.headers), 404)
    assert_problem(api.client.delete("/runs/run_x", headers=caller.headers), 405)


# -- forged cursors ----------------------------------------------------------------------------


def _forged_cursor(decoded: list[Any]) -> str:
    raw = json.dumps(decoded, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "decoded",
    [["2026-01-01T00:00:00+00:00", "run_\x00"], ["0001-01-01T00:00:00+14:00", "run_x"]],
    ids=["nul-run-id", "year-one"],
)
def test_a_forged_cursor_is_400_not_500(api: Api, caller: Caller, decoded: list[Any]) -> None:
    create_run(api, caller)
    client = TestClient(api.client.app, raise_server_exceptions=False)
    url = f"/projects/{caller.project.slug}/runs?cursor={_forged_cursor(decoded)}"
    assert_problem(client.get(url, headers=caller.headers), 400, "cursor")


def test_a_run_request_takes_whole_numbers_written_with_a_fraction_as_integers(
    api: Api, caller: Caller
) -> None:
    payload = create_body(caller.project, backoff_limit=0.0, timeout_seconds=6225.0)
    created = api.client.post("/runs", json=payload, headers=caller.headers)
    assert created.status_code == 202, created.text
    run = created.json()["run"]
    assert (run["backoff_limit"], run["timeout_seconds"]) == (0, 6225)
    half = create_body(caller.project, backoff_limit=0.5)
    refused = api.client.post("/runs", json=half, headers=caller.headers)
    assert_problem(refused, 400, "backoff_limit")
