"""The schedules API over HTTP (contract §4.3, §5.3, §10): the catalogue, trigger-now,
validation as problem+json naming the field, and project walls."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from runs.services.access import AccessService
from tests.support.api_support import Api, Caller, assert_problem, new_caller, open_api

# Every field of the hosted schedule object the head client's fixture shows (§5.3).
HOSTED_FIELDS = {
    "id",
    "project_id",
    "name",
    "status",
    "target",
    "schedule",
    "timezone",
    "runtime_target_kind",
    "runtime_target_environment_id",
    "runtime_target_branch_id",
    "config",
    "timeout_seconds",
    "backoff_limit",
    "concurrency_policy",
    "definition_source",
    "source_trigger_id",
    "source_path",
    "source_hash",
    "last_scheduled_at",
    "last_successful_at",
    "health",
    "max_runs",
    "run_count",
    "completed_at",
    "paused_reason",
    "paused_at",
    "last_failure_at",
    "last_failure_code",
    "last_failure_message",
    "last_failure_run_id",
    "created_by",
    "integration_requirements",
    "created_at",
    "updated_at",
}


@pytest.fixture(scope="module")
def api(postgres_url: str, redis_url: str, pg_engine: sa.Engine) -> Iterator[Api]:
    with open_api(postgres_url, redis_url, "api-schedules") as opened:
        yield opened


@pytest.fixture
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "sched")


def url(caller: Caller, suffix: str = "") -> str:
    return f"/projects/{caller.project.slug}/schedules{suffix}"


def create(api: Api, caller: Caller, **fields: Any) -> Any:
    body: dict[str, Any] = {
        "name": "nightly-sync",
        "target": {"kind": "task", "id": "echo"},
        "schedule": "0 3 * * *",
    }
    body.update(fields)
    return api.client.post(url(caller), json=body, headers=caller.headers)


def test_creating_a_schedule_answers_201_with_every_hosted_field(api: Api, caller: Caller) -> None:
    response = create(api, caller, timezone="Europe/Berlin", input={"full": True})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= HOSTED_FIELDS
    assert body["id"].startswith("sched_")
    assert body["project_id"] == caller.project.id
    assert body["status"] == "active"
    assert body["target"] == {"kind": "task", "id": "echo"}
    assert body["schedule"] == "0 3 * * *"
    assert body["definition_source"] == "manual"
    assert body["concurrency_policy"] == "Allow"
    assert body["catchup"] == "latest"
    assert isinstance(body["timeout_seconds"], int)
    assert body["run_count"] == 0 and body["input"] == {"full": True}
    assert datetime.fromisoformat(body["next_run_at"]) > datetime.now(UTC)


def test_cron_is_an_alias_of_schedule(api: Api, caller: Caller) -> None:
    body = create(api, caller, schedule=None, cron="15 4 * jan-mar mon-fri").json()
    assert body["schedule"] == "15 4 * jan-mar mon-fri"


def test_the_list_filters_pages_and_names_source_schedules(api: Api, caller: Caller) -> None:
    made = [create(api, caller, name=f"s{i}").json()["id"] for i in range(3)]
    paused = create(api, caller, name="p", target={"kind": "task", "id": "sleep"}).json()["id"]
    api.client.patch(url(caller, f"/{paused}"), json={"status": "paused"}, headers=caller.headers)
    first = api.client.get(url(caller, "?limit=2"), headers=caller.headers).json()
    assert [s["id"] for s in first["schedules"]] == [paused, made[2]]
    assert first["source_schedules"] == []
    rest = api.client.get(
        url(caller, f"?limit=2&cursor={first['page_info']['next']}"), headers=caller.headers
    ).json()
    assert [s["id"] for s in rest["schedules"]] == [made[1], made[0]]
    assert rest["page_info"]["next"] is None
    active = api.client.get(url(caller, "?status=active"), headers=caller.headers).json()
    assert {s["id"] for s in active["schedules"]} == set(made)
    by_target = api.client.get(url(caller, "?target=task:sleep"), headers=caller.headers).json()
    assert [s["id"] for s in by_target["schedules"]] == [paused]
    none = api.client.get(url(caller, "?source_trigger_id=nightly"), headers=caller.headers)
    assert none.json()["schedules"] == []


def test_get_patch_and_delete(api: Api, caller: Caller) -> None:
    made = create(api, caller).json()
    got = api.client.get(url(caller, f"/{made['id']}"), headers=caller.headers)
    assert got.json() == made
    changed = api.client.patch(
        url(caller, f"/{made['id']}"),
        json={"status": "paused", "concurrency_policy": "Forbid", "max_runs": 5},
        headers=caller.headers,
    ).json()
    assert (changed["status"], changed["concurrency_policy"], changed["max_runs"]) == (
        "paused",
        "Forbid",
        5,
    )
    assert changed["paused_at"] is not None and changed["paused_reason"]
    retimed = api.client.patch(
        url(caller, f"/{made['id']}"), json={"interval_seconds": 90}, headers=caller.headers
    ).json()
    assert (retimed["schedule"], retimed["interval_seconds"]) == (None, 90)
    gone = api.client.delete(url(caller, f"/{made['id']}"), headers=caller.headers)
    assert gone.status_code == 200 and gone.json()["id"] == made["id"]
    assert_problem(api.client.get(url(caller, f"/{made['id']}"), headers=caller.headers), 404)


def test_trigger_now_with_the_same_key_returns_the_same_run(api: Api, caller: Caller) -> None:
    made = create(api, caller).json()
    body = {"idempotency_key": f"schedule-run:{uuid.uuid4()}", "run_name": "by hand"}
    first = api.client.post(url(caller, f"/{made['id']}/runs"), json=body, headers=caller.headers)
    again = api.client.post(url(caller, f"/{made['id']}/runs"), json=body, headers=caller.headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    out = first.json()
    assert out["run_execution_id"] == out["run_id"] and out["schedule_id"] == made["id"]
    run = api.client.get(f"/runs/{out['run_id']}", headers=caller.headers).json()
    assert (run["schedule_id"], run["trigger_kind"], run["trigger_id"], run["target"]) == (
        made["id"],
        "schedule",
        made["id"],
        "task:echo",
    )
    listed = api.client.get(
        f"/projects/{caller.project.slug}/runs?schedule_id={made['id']}", headers=caller.headers
    ).json()
    assert [r["run_id"] for r in listed["data"]] == [out["run_id"]]
    counted = api.client.get(url(caller, f"/{made['id']}"), headers=caller.headers).json()
    assert counted["run_count"] == 1 and counted["last_scheduled_at"] is not None


PAST = (datetime.now(UTC) - timedelta(days=1)).isoformat()
FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"schedule": "61 * * * *"}, "schedule", ["not a valid cron"]),
        ({"schedule": "0 3 * *"}, "schedule", ["five fields"]),
        ({"schedule": "0 3 * * * *"}, "schedule", ["five fields"]),
        ({"timezone": "Europe/Nowhere"}, "timezone", ["IANA"]),
        ({"interval_seconds": 60}, "schedule", ["exactly one", "schedule, interval_seconds"]),
        ({"schedule": None}, "schedule", ["exactly one", "none"]),
        ({"schedule": None, "run_at": PAST}, "run_at", ["in the past"]),
        ({"schedule": None, "run_at": "2030-01-01T00:00:00"}, "run_at", ["offset"]),
        ({"schedule": None, "run_at": "tomorrow"}, "run_at", ["ISO-8601"]),
        ({"schedule": "0 3 * * *", "cron": "0 4 * * *"}, "cron", ["differ"]),
        ({"schedule": None, "interval_seconds": 0}, "interval_seconds", []),
        ({"concurrency_policy": "Sometimes"}, "concurrency_policy", []),
        ({"catchup": "never"}, "catchup", []),
        ({"target": {"kind": "agent", "id": "x"}}, "target.kind", []),
    ],
)
def test_bad_schedules_get_400_naming_the_field_and_nothing_is_stored(
    api: Api, caller: Caller, fields: dict[str, Any], field: str, words: list[str]
) -> None:
    problem = assert_problem(create(api, caller, **fields), 400, *words)
    assert field in (problem.get("field"), *(e["field"] for e in problem.get("errors") or ()))
    assert api.client.get(url(caller), headers=caller.headers).json()["schedules"] == []


def test_an_unknown_target_gets_422(api: Api, caller: Caller) -> None:
    assert_problem(create(api, caller, target={"kind": "task", "id": "missing"}), 422, "missing")


def test_a_one_time_schedule_is_accepted_with_its_run_at(api: Api, caller: Caller) -> None:
    body = create(api, caller, schedule=None, run_at=FUTURE).json()
    assert body["next_run_at"] == body["run_at"]
    assert body["schedule"] is None


def test_another_projects_schedules_answer_404(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    made = create(api, caller).json()
    stranger = new_caller(AccessService(pg_engine), "stranger")
    for method, suffix, body in (
        ("GET", f"/{made['id']}", None),
        ("PATCH", f"/{made['id']}", {"status": "paused"}),
        ("DELETE", f"/{made['id']}", None),
        ("POST", f"/{made['id']}/runs", {"idempotency_key": "k"}),
    ):
        response = api.client.request(
            method, url(stranger, suffix), json=body, headers=stranger.headers
        )
        assert_problem(response, 404)
        # The caller's own project reference with the stranger's token: not found either.
        response = api.client.request(
            method, url(caller, suffix), json=body, headers=stranger.headers
        )
        assert_problem(response, 404)
    assert api.client.get(url(caller, f"/{made['id']}"), headers=caller.headers).json() == made


def test_a_missing_token_gets_401(api: Api, caller: Caller) -> None:
    assert_problem(api.client.get(url(caller)), 401)


def test_a_wrong_method_names_every_method_of_the_path(api: Api, caller: Caller) -> None:
    response = api.client.put(url(caller, "/sched_x"), headers=caller.headers)
    assert_problem(response, 405)
    assert response.headers["allow"] == "DELETE, GET, PATCH"


def test_whole_numbers_written_with_a_fraction_are_integers_as_json_schema_says(
    api: Api, caller: Caller
) -> None:
    """JSON Schema's ``integer`` holds 491.0; a fraction that is not zero is refused."""
    created = create(
        api,
        caller,
        catchup_window_seconds=491.0,
        timeout_seconds=6225.0,
        backoff_limit=0.0,
        max_runs=3.0,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["catchup_window_seconds"], body["timeout_seconds"]) == (491, 6225)
    assert (body["backoff_limit"], body["max_runs"]) == (0, 3)
    refused = create(api, caller, timeout_seconds=60.5)
    assert refused.status_code == 400
    assert "timeout_seconds" in refused.json()["detail"]
