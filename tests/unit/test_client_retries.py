"""The SDK's retry rules, with httpx's MockTransport playing the failures (the calls
themselves are tested against the real server in test_client.py). Sync and async alike."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from runs.client import (
    InvalidRequest,
    RateLimited,
    RetryPolicy,
    ServerError,
    TransportError,
)
from tests.support.client_support import make_client

FAST = RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.02)
PROBLEM = {"type": "about:blank", "title": "Invalid request", "status": 400, "detail": "no"}
NOW = "2026-01-01T00:00:00Z"


def run_json(run_id: str = "run_1", status: str = "pending") -> dict[str, Any]:
    return {
        "run_id": run_id,
        "kind": "task",
        "status": status,
        "owner": {"kind": "project", "id": "p"},
        "parent_run_id": None,
        "root_run_id": run_id,
        "waiting_reason": None,
        "metadata": None,
        "target": "task:echo",
        "workflow_id": None,
        "schedule_id": None,
        "batch_id": None,
        "runtime_target_kind": None,
        "runtime_target_environment_id": None,
        "runtime_target_branch_id": None,
        "input": None,
        "config": {},
        "output": None,
        "error": None,
        "logs": None,
        "artifacts": [],
        "duration_ms": None,
        "exit_code": None,
        "start_mode": None,
        "timeout_seconds": None,
        "backoff_limit": None,
        "trigger_kind": "api",
        "trigger_id": None,
        "created_by": None,
        "updated_at": NOW,
        "created_at": NOW,
        "started_at": None,
        "completed_at": None,
    }


def created(request: httpx.Request) -> httpx.Response:
    run_id = json.loads(request.content)["public_id"]
    return httpx.Response(202, json={"accepted": True, "duplicate": False, "run": run_json(run_id)})


Answer = Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests in order from a list; records every request."""

    def __init__(self, *answers: Answer | httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def client_for(flavour: str, script: Script, retry: RetryPolicy = FAST) -> Any:
    return make_client(
        flavour,
        api_url="http://runs.test",
        auth_token="t",
        project_reference="demo",
        retry=retry,
        transport=httpx.MockTransport(script),
    )


def public_ids(script: Script) -> list[str]:
    return [json.loads(r.content)["public_id"] for r in script.requests]


def test_a_create_is_retried_after_5xx_and_connect_errors_under_one_public_id(
    flavour: str,
) -> None:
    script = Script(
        httpx.Response(503),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),  # maybe created: the repeat says duplicate
        created,
    )
    client = client_for(flavour, script)
    answer = client.create_task_run("echo")
    ids = public_ids(script)
    assert len(ids) == 4 and len(set(ids)) == 1 and ids[0].startswith("run_")
    assert answer.run.run_id == ids[0]
    client.close()


def test_4xx_other_than_429_is_never_retried(flavour: str) -> None:
    script = Script(
        httpx.Response(400, json=PROBLEM, headers={"content-type": "application/problem+json"})
    )
    client = client_for(flavour, script)
    with pytest.raises(InvalidRequest) as raised:
        client.get("run_1")
    assert len(script.requests) == 1
    assert raised.value.problem is not None and raised.value.problem.detail == "no"
    client.close()


def test_retry_after_is_honoured_on_429(flavour: str) -> None:
    script = Script(
        httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200, json=run_json())
    )
    client = client_for(flavour, script)
    started = time.monotonic()
    assert client.get("run_1").run_id == "run_1"
    assert time.monotonic() - started >= 0.95
    client.close()


def test_a_retry_after_beyond_the_limit_ends_the_retries(flavour: str) -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "3600"}))
    client = client_for(flavour, script)
    with pytest.raises(RateLimited) as raised:
        client.get("run_1")
    assert raised.value.retry_after == 3600
    client.close()


def test_retries_end_after_the_policys_count(flavour: str) -> None:
    script = Script(*[httpx.Response(502)] * 4)
    client = client_for(flavour, script)
    with pytest.raises(ServerError):
        client.get("run_1")
    assert len(script.requests) == 4
    script = Script(*[httpx.ConnectError("refused")] * 4)
    client = client_for(flavour, script)
    with pytest.raises(TransportError):
        client.get("run_1")
    assert len(script.requests) == 4


def test_a_signal_is_sent_again_only_when_it_surely_never_arrived(flavour: str) -> None:
    signalled = httpx.Response(200, json={"resumed": ["hook"], "run": run_json()})
    script = Script(httpx.ConnectError("refused"), signalled)
    client = client_for(flavour, script)
    assert client.signal("run_1", "paid").resumed == ["hook"]
    assert len(script.requests) == 2
    for failure in (httpx.Response(503), httpx.ReadTimeout("slow")):
        script = Script(failure, signalled)
        client = client_for(flavour, script)
        with pytest.raises((ServerError, TransportError)):
            client.signal("run_1", "paid")
        assert len(script.requests) == 1


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    policy = RetryPolicy(initial_delay=1, max_delay=5)
    for retry, step in [(0, 1), (1, 2), (2, 4), (3, 5), (6, 5)]:
        delays = [policy.backoff(retry) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 10  # jittered


def sse(*events: tuple[int, str]) -> bytes:
    frames = [": heartbeat\n\n"]
    for event_id, event_type in events:
        data = {"event_id": event_id, "event_type": event_type, "payload": {}, "created_at": NOW}
        frames.append(f"id: {event_id}\nevent: {event_type}\ndata: {json.dumps(data)}\n\n")
    return "".join(frames).encode()


class Dropping(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends ``data`` and then loses the connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection lost")

    async def __aiter__(self) -> Any:
        yield self.data
        raise httpx.ReadError("connection lost")


def test_a_stream_that_drops_resumes_after_the_last_event_it_delivered(flavour: str) -> None:
    headers = {"content-type": "text/event-stream"}
    script = Script(
        httpx.Response(200, headers=headers, stream=Dropping(sse((1, "RUN_STARTED"), (2, "LOG")))),
        httpx.Response(503),
        httpx.Response(200, headers=headers, content=sse((3, "LOG"), (4, "RUN_FINISHED"))),
    )
    client = client_for(flavour, script)
    got = [(e.event_id, e.event_type) for e in client.stream("run_1")]
    assert got == [(1, "RUN_STARTED"), (2, "LOG"), (3, "LOG"), (4, "RUN_FINISHED")]
    assert [r.headers.get("Last-Event-ID") for r in script.requests] == [None, "2", "2"]
    client.close()


def test_wait_falls_back_to_polling_when_the_stream_is_unavailable(flavour: str) -> None:
    script = Script(
        httpx.Response(200, json=run_json()),
        httpx.Response(404, json=PROBLEM | {"status": 404}),  # a server without /stream
        httpx.Response(200, json=run_json()),
        httpx.Response(200, json=run_json(status="completed")),
    )
    client = client_for(flavour, script)
    assert client.wait("run_1", poll_interval=0.01).status == "completed"
    assert [r.url.path for r in script.requests] == [
        "/runs/run_1",
        "/runs/run_1/stream",
        "/runs/run_1",
        "/runs/run_1",
    ]
    client.close()
