"""The workflow parts of the HTTP API (contract.md §4.1, §8; design.md invariants 6 and 8).

``POST /runs`` with kind ``workflow``, ``POST /runs/{run_id}/approvals`` and
``POST /runs/{run_id}/signals``, against the real PostgreSQL and the Redis broker. No worker runs
here: the app sends its jobs to a random queue that nothing consumes, and a run is parked the way
the engine parks it, with the store functions (claim, insert nodes, move them to ``waiting``,
mark the run ``waiting``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from httpx import Response

from runs.domain.definitions import Definition
from runs.domain.projects import Project
from runs.domain.workflows import NodeRecord, NodeStatus
from runs.persistence import nodes
from runs.schemas.catalog import NodeListOut
from runs.schemas.runs import (
    ApprovalOut,
    CancelRunOut,
    CreateRunOut,
    RunEventListOut,
    RunOut,
    SignalOut,
)
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from tests.support.api_support import Api, Caller, assert_problem, count_runs, new_caller, open_api
from tests.support.workflow_support import EVENT, park, ref_of

MAX_BODY_BYTES = 32768  # above the 10 000 characters a comment may have
MAX_INPUT_BYTES = 1024

WORKFLOW_TARGETS = ("workflow:wf-a", "workflow:wf-b")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow_definitions(pg_engine: sa.Engine) -> None:
    """The workflow targets the API checks POST /runs against (workers would register them)."""
    DefinitionCatalog(pg_engine, cache_seconds=0).register(
        Definition(target=target, kind="workflow") for target in WORKFLOW_TARGETS
    )


@pytest.fixture(scope="module")
def api(
    postgres_url: str, redis_url: str, pg_engine: sa.Engine, workflow_definitions: None
) -> Iterator[Api]:
    with open_api(
        postgres_url,
        redis_url,
        "api-wf-test",
        max_body_bytes=MAX_BODY_BYTES,
        max_input_bytes=MAX_INPUT_BYTES,
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def access_service(pg_engine: sa.Engine) -> AccessService:
    return AccessService(pg_engine)


@pytest.fixture
def caller(access_service: AccessService) -> Caller:
    """A new project per test: projects are walls, so tests never see each other's runs."""
    return new_caller(access_service, "wf")


@pytest.fixture
def stranger(access_service: AccessService) -> Caller:
    return new_caller(access_service, "other")


# -- helpers -------------------------------------------------------------------------------


def workflow_body(
    project: Project, workflow_id: str | None = "wf-a", **request: Any
) -> dict[str, Any]:
    """A POST /runs body as the official client's createWorkflowRun sends it."""
    fields: dict[str, Any] = {"target": f"workflow:{workflow_id}", "input": {"order": 7}}
    if workflow_id is not None:
        fields["workflow_id"] = workflow_id
    fields.update(request)
    return {"kind": "workflow", "owner": {"kind": "project", "id": project.id}, "request": fields}


def create(api: Api, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/runs", json=body, headers=caller.headers)
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()["run"]
    return run


def create_workflow_run(api: Api, caller: Caller, **request: Any) -> dict[str, Any]:
    return create(api, caller, workflow_body(caller.project, **request))


def create_task_run(api: Api, caller: Caller) -> dict[str, Any]:
    body = {
        "kind": "task",
        "owner": {"kind": "project", "id": caller.project.id},
        "request": {"target": "task:echo", "config": {"hello": "world"}},
    }
    return create(api, caller, body)


def waiting_run(api: Api, caller: Caller, engine: sa.Engine) -> dict[str, Any]:
    """A workflow run parked on the approval "review" and the event EVENT, as GET shows it."""
    run_id = create_workflow_run(api, caller)["run_id"]
    park(engine, run_id)
    run = get_run(api, caller, run_id)
    assert (run["status"], run["waiting_reason"]) == ("waiting", "approval:review")
    return run


def get_run(api: Api, caller: Caller, run_id: str) -> dict[str, Any]:
    response = api.client.get(f"/runs/{run_id}", headers=caller.headers)
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def get_events(api: Api, caller: Caller, run_id: str) -> list[dict[str, Any]]:
    response = api.client.get(f"/runs/{run_id}/events?limit=100", headers=caller.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    RunEventListOut.model_validate(body)
    events: list[dict[str, Any]] = body["data"]
    return events


def node_states(engine: sa.Engine, run_id: str) -> dict[str, NodeRecord]:
    ref = ref_of(engine, run_id)
    with engine.connect() as conn:
        return nodes.get_nodes(conn, ref)


def snapshot(api: Api, caller: Caller, engine: sa.Engine, run_id: str) -> tuple[Any, ...]:
    """Everything a refused approval or signal must leave as it was."""
    return (
        get_run(api, caller, run_id),
        node_states(engine, run_id),
        get_events(api, caller, run_id),
        api.queued(),
    )


def approve(
    api: Api, caller: Caller, run_id: str, body: dict[str, Any] | None = None, **kwargs: Any
) -> Response:
    payload = {"node_id": "review", "approved": True} if body is None else body
    response: Response = api.client.post(
        f"/runs/{run_id}/approvals", json=payload, headers=caller.headers, **kwargs
    )
    return response


def send_signal(api: Api, caller: Caller, run_id: str, event: str, payload: Any) -> Response:
    response: Response = api.client.post(
        f"/runs/{run_id}/signals", json={"event": event, "payload": payload}, headers=caller.headers
    )
    return response


def assert_iso_timestamp(value: Any) -> None:
    assert isinstance(value, str)
    assert datetime.fromisoformat(value).tzinfo is not None, value


def step_finished(events: list[dict[str, Any]], step: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["event_type"] == "STEP_FINISHED" and e["payload"].get("stepName") == step
    ]


# -- POST /runs, kind workflow --------------------------------------------------------------


def test_a_workflow_run_is_accepted_and_echoes_its_workflow_fields(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    queued_before = api.queued()
    body = workflow_body(
        caller.project,
        input={"order": 7, "lines": [1, 2]},
        start_mode="manual",
        runtime_target_kind="environment",
        runtime_target_environment_id="env-1",
    )
    response = api.client.post("/runs", json=body, headers=caller.headers)
    assert response.status_code == 202, response.text
    created = response.json()
    CreateRunOut.model_validate(created)
    assert created["accepted"] is True and created["duplicate"] is False
    run = created["run"]
    RunOut.model_validate(run)
    assert (run["kind"], run["status"]) == ("workflow", "pending")
    assert (run["target"], run["workflow_id"]) == ("workflow:wf-a", "wf-a")
    assert run["input"] == {"order": 7, "lines": [1, 2]}
    assert run["start_mode"] == "manual"
    assert (run["runtime_target_kind"], run["runtime_target_environment_id"]) == (
        "environment",
        "env-1",
    )
    assert run["config"] is None and run["waiting_reason"] is None and run["error"] is None
    assert run["owner"] == {"kind": "project", "id": caller.project.id}
    assert api.queued() == queued_before + 1, "the job was not sent to the broker"
    assert api.newest_job() == ("workflow:wf-a", [caller.project.id, run["run_id"]])
    assert get_run(api, caller, run["run_id"]) == run
    assert node_states(pg_engine, run["run_id"]) == {}, "nodes are the worker's to plan"


Change = Callable[[dict[str, Any]], None]


def _request(**fields: Any) -> Change:
    def change(body: dict[str, Any]) -> None:
        body["request"].update(fields)

    return change


def _without_workflow_id(body: dict[str, Any]) -> None:
    del body["request"]["workflow_id"]


BAD_CREATES: list[tuple[str, Change, int, tuple[str, ...]]] = [
    ("workflow_id missing", _without_workflow_id, 400, ("request.workflow_id", "wf-a")),
    ("workflow_id null", _request(workflow_id=None), 400, ("request.workflow_id",)),
    (
        "workflow_id of another registered workflow",
        _request(workflow_id="wf-b"),
        400,
        ("request.workflow_id", "wf-a"),
    ),
    (
        "workflow_id differing only in case",
        _request(workflow_id="WF-A"),
        400,
        ("request.workflow_id",),
    ),
    ("workflow_id not a string", _request(workflow_id=7), 400, ("request.workflow_id",)),
    (
        "kind workflow with a task target",
        _request(target="task:echo", workflow_id="echo"),
        400,
        ("task:echo", "workflow:"),
    ),
    ("a bare workflow id as target", _request(target="wf-a"), 400, ("target",)),
    (
        "an unknown workflow",
        _request(target="workflow:no-such-flow", workflow_id="no-such-flow"),
        422,
        ("workflow:no-such-flow",),
    ),
    ("input with a NUL", _request(input={"a": "x\x00"}), 400, ("input", "NUL")),
    ("an oversized input", _request(input={"blob": "x" * MAX_INPUT_BYTES}), 413, ("input",)),
    ("start_mode not a string", _request(start_mode=1), 400, ("start_mode",)),
]


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [pytest.param(change, status, words, id=name) for name, change, status, words in BAD_CREATES],
)
def test_a_bad_workflow_request_gets_a_clear_problem_and_changes_nothing(
    api: Api,
    caller: Caller,
    pg_engine: sa.Engine,
    change: Change,
    status: int,
    words: tuple[str, ...],
) -> None:
    existing = create_workflow_run(api, caller)
    before = (count_runs(pg_engine, caller.project), api.queued())
    body = workflow_body(caller.project)
    change(body)
    response = api.client.post("/runs", json=body, headers=caller.headers)
    assert_problem(response, status, *words)
    assert (count_runs(pg_engine, caller.project), api.queued()) == before
    assert get_run(api, caller, existing["run_id"]) == existing


def test_a_workflow_run_with_a_public_id_is_created_once(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    public_id = f"run_{uuid.uuid4()}"
    body = workflow_body(caller.project) | {"public_id": public_id}
    queued_before = api.queued()
    first = api.client.post("/runs", json=body, headers=caller.headers)
    again = api.client.post("/runs", json=body, headers=caller.headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert again.json()["run"] == first.json()["run"]
    assert first.json()["run"]["run_id"] == public_id
    assert count_runs(pg_engine, caller.project) == 1
    assert api.queued() == queued_before + 1


# -- GET /runs/{run_id}/nodes ---------------------------------------------------------------


def test_the_nodes_of_a_parked_run_show_their_states_in_plan_order(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run = waiting_run(api, caller, pg_engine)
    response = api.client.get(f"/runs/{run['run_id']}/nodes", headers=caller.headers)
    assert response.status_code == 200, response.text
    NodeListOut.model_validate(response.json())
    got = {n["node_id"]: n for n in response.json()["data"]}
    assert list(got) == ["review", "hook", "later"]
    assert [n["position"] for n in got.values()] == [0, 1, 2]
    assert [n["status"] for n in got.values()] == ["waiting", "waiting", "pending"]
    assert (got["review"]["wait_event"], got["hook"]["wait_event"]) == (None, EVENT)
    assert approve(api, caller, run["run_id"]).status_code == 200
    after = api.client.get(f"/runs/{run['run_id']}/nodes", headers=caller.headers).json()
    review = after["data"][0]
    assert (review["status"], review["output"]) == (
        "completed",
        {"approved": True, "comment": None},
    )
    assert_iso_timestamp(review["completed_at"])


def test_another_projects_workflow_nodes_are_404(
    api: Api, caller: Caller, stranger: Caller, pg_engine: sa.Engine
) -> None:
    run = waiting_run(api, caller, pg_engine)
    response = api.client.get(f"/runs/{run['run_id']}/nodes", headers=stranger.headers)
    assert_problem(response, 404, "not found")
    assert "review" not in response.text


def test_a_task_run_has_no_nodes(api: Api, caller: Caller) -> None:
    run = create_task_run(api, caller)
    response = api.client.get(f"/runs/{run['run_id']}/nodes", headers=caller.headers)
    assert response.json() == {"data": []}


# -- POST /runs/{run_id}/approvals -----------------------------------------------------------


@pytest.mark.parametrize("comment", ["ship it", None], ids=["with-comment", "without-comment"])
def test_approving_a_waiting_node_completes_it_and_resumes_the_run(
    api: Api, caller: Caller, pg_engine: sa.Engine, comment: str | None
) -> None:
    run = waiting_run(api, caller, pg_engine)
    run_id = run["run_id"]
    queued_before = api.queued()
    body: dict[str, Any] = {"node_id": "review", "approved": True}
    if comment is not None:
        body["comment"] = comment
    response = approve(api, caller, run_id, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    ApprovalOut.model_validate(answer)
    resumed = answer["run"]
    assert resumed["run_id"] == run_id
    assert (resumed["status"], resumed["waiting_reason"]) == ("running", None)
    assert resumed["completed_at"] is None and resumed["error"] is None
    assert get_run(api, caller, run_id) == resumed

    states = node_states(pg_engine, run_id)
    review = states["review"]
    assert review.status is NodeStatus.COMPLETED
    assert review.output == {"approved": True, "comment": comment}
    assert review.error is None and review.completed_at is not None
    assert states["hook"].status is NodeStatus.WAITING, "only the approved node moves"
    assert states["later"].status is NodeStatus.PENDING

    assert api.queued() == queued_before + 1, "no job was sent to re-plan the run"
    assert api.newest_job()[0] == run["target"]
    assert api.newest_job()[1][:2] == [caller.project.id, run_id]
    finished = step_finished(get_events(api, caller, run_id), "review")
    assert [e["payload"]["status"] for e in finished] == ["completed"]


def test_rejecting_a_waiting_node_fails_it_with_code_rejected(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run = waiting_run(api, caller, pg_engine)
    run_id = run["run_id"]
    queued_before = api.queued()
    body = {"node_id": "review", "approved": False, "comment": "numbers are wrong"}
    response = approve(api, caller, run_id, body)
    assert response.status_code == 200, response.text
    ApprovalOut.model_validate(response.json())
    assert response.json()["run"]["status"] == "running"

    review = node_states(pg_engine, run_id)["review"]
    assert review.status is NodeStatus.FAILED
    assert review.error is not None and review.error.code == "rejected"
    assert "numbers are wrong" in review.error.message
    assert review.output is None and review.completed_at is not None
    assert api.queued() == queued_before + 1
    assert api.newest_job() == (run["target"], [caller.project.id, run_id])
    finished = step_finished(get_events(api, caller, run_id), "review")
    assert [e["payload"]["status"] for e in finished] == ["failed"]


def test_approving_the_same_node_twice_resumes_once(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run_id = waiting_run(api, caller, pg_engine)["run_id"]
    assert approve(api, caller, run_id).status_code == 200
    before = snapshot(api, caller, pg_engine, run_id)
    again = approve(api, caller, run_id, {"node_id": "review", "approved": False})
    body = assert_problem(again, 409, "review")
    assert body["field"] == "node_id"
    assert snapshot(api, caller, pg_engine, run_id) == before
    assert node_states(pg_engine, run_id)["review"].status is NodeStatus.COMPLETED


# Each returns (run_id, node_id) of an approval that must be refused with 409.
Setup = Callable[[Api, Caller, sa.Engine], tuple[str, str]]


def _waiting(node_id: str) -> Setup:
    def setup(api: Api, caller: Caller, engine: sa.Engine) -> tuple[str, str]:
        return waiting_run(api, caller, engine)["run_id"], node_id

    return setup


def _pending_workflow(api: Api, caller: Caller, engine: sa.Engine) -> tuple[str, str]:
    return create_workflow_run(api, caller)["run_id"], "review"


def _running_with_a_waiting_node(api: Api, caller: Caller, engine: sa.Engine) -> tuple[str, str]:
    run_id = create_workflow_run(api, caller)["run_id"]
    park(engine, run_id, run_waits=False)
    return run_id, "review"


def test_a_node_can_be_approved_while_other_steps_of_the_run_still_run(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run_id, node_id = _running_with_a_waiting_node(api, caller, pg_engine)
    response = approve(api, caller, run_id, {"node_id": node_id, "approved": True})
    assert response.status_code == 200, response.text
    assert node_states(pg_engine, run_id)[node_id].status is NodeStatus.COMPLETED


def _cancelled(api: Api, caller: Caller, engine: sa.Engine) -> tuple[str, str]:
    run_id = waiting_run(api, caller, engine)["run_id"]
    cancel = api.client.post(f"/runs/{run_id}/cancel", headers=caller.headers)
    assert cancel.status_code == 200 and cancel.json()["cancelled"] is True
    return run_id, "review"


def _task(api: Api, caller: Caller, engine: sa.Engine) -> tuple[str, str]:
    return create_task_run(api, caller)["run_id"], "review"


CONFLICTS: list[tuple[str, Setup]] = [
    ("a node that has not started", _waiting("later")),
    ("an unknown node", _waiting("no-such-node")),
    ("a node that waits for an event", _waiting("hook")),
    ("a pending run", _pending_workflow),
    ("a cancelled run", _cancelled),
    ("a task run", _task),
]


@pytest.mark.parametrize("setup", [pytest.param(s, id=name) for name, s in CONFLICTS])
def test_an_approval_nothing_waits_for_is_409_naming_the_node_and_changes_nothing(
    api: Api, caller: Caller, pg_engine: sa.Engine, setup: Setup
) -> None:
    run_id, node_id = setup(api, caller, pg_engine)
    before = snapshot(api, caller, pg_engine, run_id)
    response = approve(api, caller, run_id, {"node_id": node_id, "approved": True})
    body = assert_problem(response, 409, node_id)
    assert body["field"] == "node_id"
    assert snapshot(api, caller, pg_engine, run_id) == before


def test_approving_a_node_that_waits_for_an_event_points_to_signals(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run_id = waiting_run(api, caller, pg_engine)["run_id"]
    response = approve(api, caller, run_id, {"node_id": "hook", "approved": True})
    assert_problem(response, 409, "hook", EVENT, "signals")


BAD_APPROVALS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("node_id missing", {"approved": True}, ("node_id",)),
    ("node_id empty", {"node_id": "", "approved": True}, ("node_id",)),
    ("node_id not a string", {"node_id": 7, "approved": True}, ("node_id",)),
    ("node_id with a NUL", {"node_id": "rev\x00iew", "approved": True}, ("node_id", "NUL")),
    ("approved missing", {"node_id": "review"}, ("approved",)),
    ("approved a string", {"node_id": "review", "approved": "yes"}, ("approved",)),
    ("approved a number", {"node_id": "review", "approved": 1}, ("approved",)),
    ("approved null", {"node_id": "review", "approved": None}, ("approved",)),
    (
        "comment not a string",
        {"node_id": "review", "approved": True, "comment": ["a"]},
        ("comment",),
    ),
    (
        "comment too long",
        {"node_id": "review", "approved": True, "comment": "x" * 10_001},
        ("comment",),
    ),
    ("a body that is not an object", ["review", True], ("body",)),
    ("malformed JSON", b'{"node_id": "review", "approved": ', ("JSON",)),
    ("no body at all", b"", ("body",)),
]


@pytest.mark.parametrize(
    ("body", "words"),
    [pytest.param(body, words, id=name) for name, body, words in BAD_APPROVALS],
)
def test_a_bad_approval_body_is_400_naming_the_field_and_changes_nothing(
    api: Api, caller: Caller, pg_engine: sa.Engine, body: Any, words: tuple[str, ...]
) -> None:
    run_id = waiting_run(api, caller, pg_engine)["run_id"]
    before = snapshot(api, caller, pg_engine, run_id)
    url = f"/runs/{run_id}/approvals"
    if isinstance(body, bytes):
        response = api.client.post(url, content=body, headers=caller.headers)
    else:
        response = api.client.post(url, json=body, headers=caller.headers)
    assert_problem(response, 400, *words)
    assert snapshot(api, caller, pg_engine, run_id) == before


# -- POST /runs/{run_id}/signals -------------------------------------------------------------


def test_the_awaited_event_completes_its_node_with_the_payload(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run = waiting_run(api, caller, pg_engine)
    run_id = run["run_id"]
    queued_before = api.queued()
    payload = {"amount": 42, "currency": "EUR", "ok": [True, None]}
    response = send_signal(api, caller, run_id, EVENT, payload)
    assert response.status_code == 200, response.text
    answer = response.json()
    SignalOut.model_validate(answer)
    assert answer["resumed"] == ["hook"]
    assert answer["run"]["run_id"] == run_id
    assert answer["run"]["status"] == "running"
    assert get_run(api, caller, run_id) == answer["run"]

    states = node_states(pg_engine, run_id)
    assert states["hook"].status is NodeStatus.COMPLETED
    assert states["hook"].output == payload
    assert states["hook"].completed_at is not None
    assert states["review"].status is NodeStatus.WAITING, "an approval is not resumed by events"
    assert api.queued() == queued_before + 1
    assert api.newest_job() == (run["target"], [caller.project.id, run_id])
    finished = step_finished(get_events(api, caller, run_id), "hook")
    assert [e["payload"]["status"] for e in finished] == ["completed"]

    before = snapshot(api, caller, pg_engine, run_id)
    again = send_signal(api, caller, run_id, EVENT, {"amount": 1})
    body = assert_problem(again, 409, EVENT)
    assert body["field"] == "event"
    assert snapshot(api, caller, pg_engine, run_id) == before, "an event resumes a node once"


def test_a_signal_reaches_a_node_parked_beside_a_running_branch(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    """The engine leaves a run ``running`` while a step runs beside a parked node; an event for
    that node is delivered (unlike an approval, which needs the run ``waiting``)."""
    run_id = create_workflow_run(api, caller)["run_id"]
    park(pg_engine, run_id, run_waits=False)
    queued_before = api.queued()
    response = send_signal(api, caller, run_id, EVENT, {"amount": 1})
    assert response.status_code == 200, response.text
    assert response.json()["resumed"] == ["hook"]
    assert response.json()["run"]["status"] == "running"
    assert node_states(pg_engine, run_id)["hook"].status is NodeStatus.COMPLETED
    assert api.queued() == queued_before + 1


@pytest.mark.parametrize(
    "payload", [None, "plain", 3, [1, "a"]], ids=["null", "str", "int", "list"]
)
def test_any_json_payload_becomes_the_output(
    api: Api, caller: Caller, pg_engine: sa.Engine, payload: Any
) -> None:
    run_id = waiting_run(api, caller, pg_engine)["run_id"]
    response = send_signal(api, caller, run_id, EVENT, payload)
    assert response.status_code == 200, response.text
    assert response.json()["resumed"] == ["hook"]
    assert node_states(pg_engine, run_id)["hook"].output == payload


def _waiting_run_id(api: Api, caller: Caller, engine: sa.Engine) -> str:
    return str(waiting_run(api, caller, engine)["run_id"])


def _task_run_id(api: Api, caller: Caller, engine: sa.Engine) -> str:
    return str(create_task_run(api, caller)["run_id"])


def _pending_run_id(api: Api, caller: Caller, engine: sa.Engine) -> str:
    return str(create_workflow_run(api, caller)["run_id"])


def _cancelled_run_id(api: Api, caller: Caller, engine: sa.Engine) -> str:
    return _cancelled(api, caller, engine)[0]


SIGNAL_CONFLICTS: list[tuple[str, Callable[[Api, Caller, sa.Engine], str], str]] = [
    ("an event nobody waits for", _waiting_run_id, "order.shipped"),
    ("the node id of an approval as event", _waiting_run_id, "review"),
    ("an event name differing in case", _waiting_run_id, EVENT.upper()),
    ("a task run", _task_run_id, EVENT),
    ("a pending workflow run", _pending_run_id, EVENT),
    ("a cancelled workflow run", _cancelled_run_id, EVENT),
]


@pytest.mark.parametrize(
    ("setup", "event"),
    [pytest.param(setup, event, id=name) for name, setup, event in SIGNAL_CONFLICTS],
)
def test_a_signal_nothing_waits_for_is_409_naming_the_event_and_changes_nothing(
    api: Api,
    caller: Caller,
    pg_engine: sa.Engine,
    setup: Callable[[Api, Caller, sa.Engine], str],
    event: str,
) -> None:
    run_id = setup(api, caller, pg_engine)
    before = snapshot(api, caller, pg_engine, run_id)
    response = send_signal(api, caller, run_id, event, {"x": 1})
    body = assert_problem(response, 409, event)
    assert body["field"] == "event"
    assert snapshot(api, caller, pg_engine, run_id) == before


BAD_SIGNALS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("event missing", {"payload": {}}, ("event",)),
    ("event empty", {"event": "", "payload": {}}, ("event",)),
    ("event not a string", {"event": 5, "payload": {}}, ("event",)),
    ("event too long", {"event": "e" * 201}, ("event",)),
    ("a NUL in the payload", {"event": EVENT, "payload": {"k": "v\x00"}}, ("payload", "NUL")),
    ("a body that is not an object", [EVENT], ("body",)),
    ("malformed JSON", b'{"event": ', ("JSON",)),
    ("NaN in the payload", b'{"event": "payment.received", "payload": NaN}', ("payload", "nan")),
]


@pytest.mark.parametrize(
    ("body", "words"),
    [pytest.param(body, words, id=name) for name, body, words in BAD_SIGNALS],
)
def test_a_bad_signal_body_is_400_naming_the_field_and_changes_nothing(
    api: Api, caller: Caller, pg_engine: sa.Engine, body: Any, words: tuple[str, ...]
) -> None:
    run_id = waiting_run(api, caller, pg_engine)["run_id"]
    before = snapshot(api, caller, pg_engine, run_id)
    url = f"/runs/{run_id}/signals"
    if isinstance(body, bytes):
        response = api.client.post(url, content=body, headers=caller.headers)
    else:
        response = api.client.post(url, json=body, headers=caller.headers)
    assert_problem(response, 400, *words)
    assert snapshot(api, caller, pg_engine, run_id) == before


# -- invariant 6: projects are walls; tokens ------------------------------------------------

ENDPOINTS = [
    ("approvals", {"node_id": "review", "approved": True}),
    ("signals", {"event": EVENT, "payload": {"amount": 1}}),
]


@pytest.mark.parametrize(("endpoint", "body"), ENDPOINTS, ids=[e for e, _ in ENDPOINTS])
def test_another_projects_waiting_run_is_404_and_unchanged(
    api: Api,
    caller: Caller,
    stranger: Caller,
    pg_engine: sa.Engine,
    endpoint: str,
    body: dict[str, Any],
) -> None:
    run_id = waiting_run(api, caller, pg_engine)["run_id"]
    before = snapshot(api, caller, pg_engine, run_id)
    response = api.client.post(f"/runs/{run_id}/{endpoint}", json=body, headers=stranger.headers)
    problem = assert_problem(response, 404, "not found")
    assert "run" not in problem and "resumed" not in problem
    assert caller.project.id not in response.text and caller.project.slug not in response.text
    assert snapshot(api, caller, pg_engine, run_id) == before


@pytest.mark.parametrize(("endpoint", "body"), ENDPOINTS, ids=[e for e, _ in ENDPOINTS])
@pytest.mark.parametrize("run_id", ["run_nope", "run_%00x"], ids=["unknown", "nul"])
def test_an_unknown_run_is_404(
    api: Api, caller: Caller, endpoint: str, body: dict[str, Any], run_id: str
) -> None:
    response = api.client.post(f"/runs/{run_id}/{endpoint}", json=body, headers=caller.headers)
    assert_problem(response, 404, "not found")


@pytest.mark.parametrize(("endpoint", "body"), ENDPOINTS, ids=[e for e, _ in ENDPOINTS])
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer ", "Bearer runs_not-a-real-token", "Basic dXNlcjpwYXNz"],
    ids=["missing", "empty", "unknown", "basic"],
)
def test_a_missing_or_bad_token_is_401_and_changes_nothing(
    api: Api,
    caller: Caller,
    pg_engine: sa.Engine,
    endpoint: str,
    body: dict[str, Any],
    authorization: str | None,
) -> None:
    run_id = waiting_run(api, caller, pg_engine)["run_id"]
    before = snapshot(api, caller, pg_engine, run_id)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = api.client.post(f"/runs/{run_id}/{endpoint}", json=body, headers=headers)
    assert_problem(response, 401, "token")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert snapshot(api, caller, pg_engine, run_id) == before


# -- cancelling a waiting workflow run ------------------------------------------------------


def test_cancelling_a_waiting_workflow_run_ends_its_nodes_and_events(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run = waiting_run(api, caller, pg_engine)
    run_id = run["run_id"]
    queued_before = api.queued()
    response = api.client.post(f"/runs/{run_id}/cancel", headers=caller.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    CancelRunOut.model_validate(body)
    assert body["cancelled"] is True
    cancelled = body["run"]
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["code"] == "cancelled"
    assert_iso_timestamp(cancelled["completed_at"])
    assert cancelled["started_at"] == run["started_at"] is not None
    assert isinstance(cancelled["duration_ms"], int) and cancelled["duration_ms"] >= 0
    assert get_run(api, caller, run_id) == cancelled
    assert api.queued() == queued_before, "cancelling sends no job"

    states = node_states(pg_engine, run_id)
    assert {n: s.status for n, s in states.items()} == {
        "review": NodeStatus.CANCELLED,
        "hook": NodeStatus.CANCELLED,
        "later": NodeStatus.SKIPPED,
    }
    assert all(s.completed_at is not None for s in states.values())

    events = get_events(api, caller, run_id)
    types = [e["event_type"] for e in events]
    assert types.count("RUN_ERROR") == 1 and types[-1] == "RUN_ERROR"
    assert events[-1]["payload"]["status"] == "cancelled"
    assert step_finished(events, run["target"]) == []
    assert "RUN_FINISHED" not in types
    ids = [e["event_id"] for e in events]
    assert ids == sorted(set(ids)) and ids[0] > 0

    again = api.client.post(f"/runs/{run_id}/cancel", headers=caller.headers)
    assert again.status_code == 200 and again.json() == {"cancelled": False, "run": cancelled}


def test_cancelling_after_an_approval_keeps_the_approved_node_and_its_event(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run = waiting_run(api, caller, pg_engine)
    run_id = run["run_id"]
    assert approve(api, caller, run_id).status_code == 200
    response = api.client.post(f"/runs/{run_id}/cancel", headers=caller.headers)
    assert response.status_code == 200 and response.json()["cancelled"] is True
    states = node_states(pg_engine, run_id)
    assert states["review"].status is NodeStatus.COMPLETED, "an ended node stays as it ended"
    assert states["hook"].status is NodeStatus.CANCELLED
    events = get_events(api, caller, run_id)
    assert [e["payload"]["status"] for e in step_finished(events, "review")] == ["completed"]
    assert [e["event_type"] for e in events].count("RUN_ERROR") == 1
    assert events[-1]["event_type"] == "RUN_ERROR"
    assert step_finished(events, run["target"]) == []


def test_a_cancelled_waiting_run_no_longer_reports_a_waiting_reason(
    api: Api, caller: Caller, pg_engine: sa.Engine
) -> None:
    run_id = waiting_run(api, caller, pg_engine)["run_id"]
    response = api.client.post(f"/runs/{run_id}/cancel", headers=caller.headers)
    assert response.status_code == 200
    assert response.json()["run"]["waiting_reason"] is None
    assert get_run(api, caller, run_id)["waiting_reason"] is None
