"""The Python SDK (``runs.client``) against a real `runs api` process and worker: every
method, in the sync and the async client alike, and ``ctx.runs`` inside a task."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runs.client import (
    ConfigurationError,
    InvalidRequest,
    NotFound,
    RunsClient,
    Unauthorized,
    WaitTimeout,
    create_runs_client,
)
from runs.services.access import AccessService
from tests.conftest import WorkerPool
from tests.support.api_support import Caller, new_caller
from tests.support.client_support import make_client
from tests.support.server_support import Server, serving

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def server(
    postgres_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    repo_root: Path,
    worker_pool: WorkerPool,
) -> Iterator[Server]:
    with serving(
        postgres_url,
        redis_url,
        tmp_path_factory.mktemp("client"),
        repo_root,
        RUNS_DEFAULT_QUEUE=worker_pool.settings.default_queue,
        RUNS_SSE_HEARTBEAT_SECONDS="0.5",
    ) as started:
        yield started


@pytest.fixture
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "sdk")


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest, server: Server, caller: Caller) -> Iterator[Any]:
    made = make_client(
        request.param,
        api_url=server.url,
        auth_token=caller.token,
        project_reference=caller.project.slug,
    )
    yield made
    made.close()


def test_a_task_run_is_created_and_waited_for(client: Any) -> None:
    created = client.create_task_run("task:echo", config={"hello": "sdk"}, name="greeting")
    assert created.accepted and not created.duplicate
    assert created.run.run_id.startswith("run_")  # the client chose its public_id
    run = client.wait(created.run.run_id, timeout=30)
    assert run.status == "completed"
    assert run.output == {"hello": "sdk"}
    assert run.name == "greeting"


def test_a_create_with_a_known_public_id_is_a_duplicate_not_a_second_run(client: Any) -> None:
    public_id = f"run_{uuid.uuid4()}"
    first = client.create_task_run("echo", config={"n": 1}, public_id=public_id)
    again = client.create_task_run("echo", config={"n": 2}, public_id=public_id)
    assert first.run.run_id == again.run.run_id == public_id
    assert again.duplicate


def test_a_workflow_run_runs_to_its_end(client: Any) -> None:
    created = client.create_workflow_run("demo-pipeline", input={"text": "one two three"})
    assert created.run.target == "workflow:demo-pipeline"
    run = client.wait(created.run.run_id, timeout=30)
    assert run.status == "completed", run.error
    assert run.output == {"summary": "3 words"}
    nodes = client.nodes(run.run_id).data
    assert [(n.node_id, n.status) for n in nodes] == [
        ("fetch", "completed"),
        ("analyze", "completed"),
        ("summarize", "completed"),
    ]


def test_whoami_names_the_tokens_project(client: Any, caller: Caller) -> None:
    assert client.whoami().project.id == caller.project.id
    assert client.whoami().project.slug == caller.project.slug


def test_stream_yields_what_events_pages_out_and_ends_at_the_terminal_event(client: Any) -> None:
    run_id = client.create_task_run("task:test/ticker", config={"n": 4, "interval": 0.1}).run.run_id
    streamed = list(client.stream(run_id))
    assert streamed[-1].event_type == "RUN_FINISHED"
    paged, after = [], 0
    while True:
        page = client.events(run_id, after=after, limit=3)
        paged += page.data
        if page.page_info.next is None:
            break
        after = int(page.page_info.next)
    assert [e.event_id for e in streamed] == [e.event_id for e in paged]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in paged]
    later = list(client.stream(run_id, after=streamed[1].event_id))
    assert [e.event_id for e in later] == [e.event_id for e in streamed[2:]]


def test_list_and_iter_runs_page_through_the_projects_runs(client: Any) -> None:
    made = [client.create_task_run("echo", config={"i": i}).run.run_id for i in range(3)]
    failed = client.create_task_run("fail", config={"message": "no"}).run.run_id
    client.wait(failed, timeout=30)
    page = client.list(limit=2)
    assert len(page.data) == 2 and page.page_info.next is not None
    everything = [r.run_id for r in client.iter_runs(limit=2)]
    assert sorted(everything) == sorted([*made, failed])
    assert [r.run_id for r in client.iter_runs(status="failed")] == [failed]
    assert {r.run_id for r in client.iter_runs(target=["task:echo"], limit=1)} == set(made)


def test_cancel_ends_a_running_run_and_wait_returns_it_cancelled(client: Any) -> None:
    run_id = client.create_task_run("sleep", config={"seconds": 30}).run.run_id
    deadline = time.monotonic() + 20
    while client.get(run_id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = client.cancel(run_id)
    assert cancelled.cancelled
    assert client.wait(run_id, timeout=20).status == "cancelled"


def test_wait_gives_up_after_its_timeout(client: Any) -> None:
    run_id = client.create_task_run("sleep", config={"seconds": 30}).run.run_id
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        client.wait(run_id, timeout=1)
    assert 0.9 < time.monotonic() - started < 5
    client.cancel(run_id)


def test_approve_and_signal_resume_parked_workflows(client: Any) -> None:
    approval = client.create_workflow_run("test/approval").run.run_id
    event = client.create_workflow_run("test/event").run.run_id
    deadline = time.monotonic() + 20
    while {client.get(approval).status, client.get(event).status} != {"waiting"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.approve(approval, "review", comment="fine").run.run_id == approval
    signalled = client.signal(event, "payment.received", {"amount": 5})
    assert signalled.resumed == ["hook"]
    assert client.wait(approval, timeout=30).output is not None
    assert client.wait(event, timeout=30).status == "completed"


def test_errors_are_typed_and_carry_the_problem(
    client: Any, server: Server, caller: Caller
) -> None:
    with pytest.raises(NotFound) as missing:
        client.get("run_does-not-exist")
    assert missing.value.status == 404
    assert missing.value.problem is not None and "not found" in missing.value.problem.detail
    with pytest.raises(InvalidRequest) as invalid:
        client.create_task_run("echo", timeout_seconds=0)
    assert invalid.value.status == 400
    assert invalid.value.response.request.method == "POST"
    stranger = make_client("sync", api_url=server.url, auth_token="rt_nope", project_reference="x")
    with pytest.raises(Unauthorized):
        stranger.get("run_x")
    stranger.close()


def test_a_task_starts_and_waits_on_another_run_through_ctx_runs(client: Any) -> None:
    parent = client.create_task_run("task:test/waits-on-child").run.run_id
    run = client.wait(parent, timeout=30)
    assert run.status == "completed", run.error
    assert run.output["status"] == "completed"
    assert run.output["parent"] == parent
    assert run.output["output"] == {"from": parent}
    assert client.get(run.output["child"]).parent_run_id == parent


def test_configuration_comes_from_the_environment(
    server: Server, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RUNS_API_URL", "RUNS_API_TOKEN", "RUNS_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VERYFRONT_API_URL", server.url)
    monkeypatch.setenv("VERYFRONT_API_TOKEN", caller.token)
    monkeypatch.setenv("VERYFRONT_PROJECT_SLUG", caller.project.slug)
    with create_runs_client() as client:
        assert client.list().data == []
    monkeypatch.setenv("RUNS_PROJECT", caller.project.id)
    with RunsClient() as client:
        assert client.project_reference == caller.project.id
    monkeypatch.delenv("VERYFRONT_API_TOKEN")
    with pytest.raises(ConfigurationError, match="RUNS_API_TOKEN"):
        RunsClient()
    monkeypatch.delenv("RUNS_PROJECT")
    monkeypatch.delenv("VERYFRONT_PROJECT_SLUG")
    with RunsClient(auth_token=caller.token) as bare:  # no project: the token's own
        assert bare.project_reference is None
        assert bare.list().data == []
        assert bare.project_reference == caller.project.id
