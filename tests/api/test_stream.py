"""``GET /runs/{run_id}/stream`` (Server-Sent Events) on a real `runs api` process and worker:
replay then live without gap or duplicate, resuming with Last-Event-ID, heartbeats, a
finished run replayed from SQL, and errors before the stream starts."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from runs.services.access import AccessService
from tests.conftest import WorkerPool
from tests.support.api_support import Caller, new_caller
from tests.support.helpers import create_body
from tests.support.server_support import Server, serving

pytestmark = pytest.mark.worker


@dataclass
class Frame:
    id: int | None
    event: str | None
    data: dict[str, Any] | None
    comment: bool = False


def frames(response: httpx.Response) -> Iterator[Frame]:
    """The frames of an event stream as they arrive."""
    fields: dict[str, str] = {}
    comment = False
    for line in response.iter_lines():
        if line == "":
            if fields or comment:
                yield Frame(
                    id=int(fields["id"]) if "id" in fields else None,
                    event=fields.get("event"),
                    data=json.loads(fields["data"]) if "data" in fields else None,
                    comment=comment and not fields,
                )
            fields, comment = {}, False
        elif line.startswith(":"):
            comment = True
        else:
            name, _, value = line.partition(": ")
            fields[name] = value


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
        tmp_path_factory.mktemp("stream"),
        repo_root,
        RUNS_DEFAULT_QUEUE=worker_pool.settings.default_queue,
        RUNS_SSE_HEARTBEAT_SECONDS="0.3",
    ) as started:
        yield started


@pytest.fixture
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "stream")


def start_run(server: Server, caller: Caller, target: str, **config: Any) -> str:
    body = create_body(caller.project, target)
    body["request"]["config"] = config
    created = httpx.post(f"{server.url}/runs", json=body, headers=caller.headers)
    assert created.status_code == 202, created.text
    run_id: str = created.json()["run"]["run_id"]
    return run_id


def all_event_ids(server: Server, caller: Caller, run_id: str) -> list[int]:
    """The ids /events pages out, two at a time, as the official client pages."""
    ids: list[int] = []
    after = 0
    while True:
        page = httpx.get(
            f"{server.url}/runs/{run_id}/events?after_event_id={after}&limit=2",
            headers=caller.headers,
        ).json()
        ids += [e["event_id"] for e in page["data"]]
        if page["page_info"]["next"] is None:
            return ids
        after = int(page["page_info"]["next"])


def wait_ended(server: Server, caller: Caller, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        run: dict[str, Any] = httpx.get(
            f"{server.url}/runs/{run_id}", headers=caller.headers
        ).json()
        if run["status"] in ("completed", "failed", "cancelled"):
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def follow(server: Server, caller: Caller, run_id: str, **headers: str) -> list[Frame]:
    with httpx.stream(
        "GET",
        f"{server.url}/runs/{run_id}/stream",
        headers={**caller.headers, **headers},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [f for f in frames(response) if not f.comment]


def test_a_live_run_streams_from_its_first_event_to_its_terminal_one(
    server: Server, caller: Caller
) -> None:
    run_id = start_run(server, caller, "task:test/ticker", n=5, interval=0.2)
    got = follow(server, caller, run_id)
    assert got[-1].event == "RUN_FINISHED"
    assert [f.data["event_id"] for f in got if f.data] == [f.id for f in got]
    assert got[0].data is not None and set(got[0].data) == {
        "event_id",
        "event_type",
        "payload",
        "created_at",
    }
    wait_ended(server, caller, run_id)
    assert [f.id for f in got] == all_event_ids(server, caller, run_id)
    assert sum(f.event == "PROGRESS_REPORTED" for f in got) == 5


def test_a_follower_that_drops_resumes_with_last_event_id_and_misses_nothing(
    server: Server, caller: Caller
) -> None:
    run_id = start_run(server, caller, "task:test/ticker", n=8, interval=0.25)
    first: list[Frame] = []
    with httpx.stream(
        "GET", f"{server.url}/runs/{run_id}/stream", headers=caller.headers, timeout=30
    ) as response:
        for f in frames(response):
            if not f.comment:
                first.append(f)
            if sum(x.event == "PROGRESS_REPORTED" for x in first) == 2:
                break  # the connection drops mid-run
    rest = follow(server, caller, run_id, **{"Last-Event-ID": str(first[-1].id)})
    assert rest[-1].event == "RUN_FINISHED"
    wait_ended(server, caller, run_id)
    assert [f.id for f in first + rest] == all_event_ids(server, caller, run_id)


def test_many_followers_of_one_run_each_get_every_event_once_whenever_they_join(
    server: Server, caller: Caller
) -> None:
    run_id = start_run(server, caller, "task:test/ticker", n=8, interval=0.15)
    with ThreadPoolExecutor(max_workers=12) as pool:
        early = [pool.submit(follow, server, caller, run_id) for _ in range(8)]
        time.sleep(0.6)  # a few events in: these join a run whose reader is under way
        late = [pool.submit(follow, server, caller, run_id) for _ in range(4)]
        streams = [f.result(timeout=30) for f in early + late]
    wait_ended(server, caller, run_id)
    expected = all_event_ids(server, caller, run_id)
    for got in streams:
        assert [f.id for f in got] == expected
        assert got[-1].event == "RUN_FINISHED"


def test_after_event_id_starts_the_stream_and_last_event_id_wins(
    server: Server, caller: Caller
) -> None:
    run_id = start_run(server, caller, "task:echo", hello=1)
    wait_ended(server, caller, run_id)
    ids = all_event_ids(server, caller, run_id)
    with httpx.stream(
        "GET",
        f"{server.url}/runs/{run_id}/stream?after_event_id={ids[0]}",
        headers={**caller.headers, "Last-Event-ID": str(ids[1])},
    ) as response:
        assert [f.id for f in frames(response) if not f.comment] == ids[2:]
    with httpx.stream(
        "GET", f"{server.url}/runs/{run_id}/stream?after_event_id={ids[0]}", headers=caller.headers
    ) as response:
        assert [f.id for f in frames(response) if not f.comment] == ids[1:]


def test_a_finished_runs_stream_replays_its_events_and_closes(
    server: Server, caller: Caller
) -> None:
    run_id = start_run(server, caller, "task:fail", message="no")
    assert wait_ended(server, caller, run_id)["status"] == "failed"
    started = time.monotonic()
    got = follow(server, caller, run_id)
    assert time.monotonic() - started < 5  # closed, not held open
    assert [f.id for f in got] == all_event_ids(server, caller, run_id)
    assert got[-1].event == "RUN_ERROR"


def test_heartbeats_arrive_while_nothing_happens(
    postgres_url: str, redis_url: str, tmp_path: Path, repo_root: Path, caller: Caller
) -> None:
    # A server whose jobs nothing consumes: the run stays pending, the stream stays quiet.
    with serving(
        postgres_url, redis_url, tmp_path, repo_root, RUNS_SSE_HEARTBEAT_SECONDS="0.2"
    ) as quiet:
        run_id = start_run(quiet, caller, "task:echo")
        beats = 0
        started = time.monotonic()
        with httpx.stream(
            "GET", f"{quiet.url}/runs/{run_id}/stream", headers=caller.headers, timeout=10
        ) as response:
            for f in frames(response):
                assert f.comment, f  # a pending run that never starts has no event
                beats += 1
                if beats == 3:
                    break
        assert time.monotonic() - started < 5


def test_the_api_stops_on_sigterm_within_its_grace_even_with_a_follower(
    postgres_url: str, redis_url: str, tmp_path: Path, repo_root: Path, caller: Caller
) -> None:
    with serving(
        postgres_url, redis_url, tmp_path, repo_root, RUNS_HTTP_SHUTDOWN_GRACE_SECONDS="1"
    ) as api:
        run_id = start_run(api, caller, "task:echo")  # never starts: its stream never ends
        with httpx.stream(
            "GET", f"{api.url}/runs/{run_id}/stream", headers=caller.headers, timeout=10
        ) as response:
            assert response.status_code == 200
            started = time.monotonic()
            api.process.send_signal(signal.SIGTERM)
            # uvicorn ends by re-raising the signal once it has shut down.
            assert api.process.wait(timeout=15) in (0, -signal.SIGTERM), api.log()
        assert time.monotonic() - started < 6


def test_requests_in_flight_when_the_api_gets_sigterm_finish(
    postgres_url: str,
    redis_url: str,
    tmp_path: Path,
    repo_root: Path,
    caller: Caller,
    worker_pool: WorkerPool,
) -> None:
    with serving(
        postgres_url,
        redis_url,
        tmp_path,
        repo_root,
        RUNS_DEFAULT_QUEUE=worker_pool.settings.default_queue,
        RUNS_HTTP_SHUTDOWN_GRACE_SECONDS="20",
    ) as api:
        run_id = start_run(api, caller, "task:test/ticker", n=8, interval=0.25)
        got: list[Frame] = []
        with httpx.stream(
            "GET", f"{api.url}/runs/{run_id}/stream", headers=caller.headers, timeout=30
        ) as response:
            for f in frames(response):
                if f.comment:
                    continue
                got.append(f)
                if len(got) == 3:  # the run is under way: a deploy stops the API now
                    api.process.send_signal(signal.SIGTERM)
        # The follower read on to the end of the run, then the API stopped.
        assert got[-1].event == "RUN_FINISHED", api.log()
        assert sum(f.event == "PROGRESS_REPORTED" for f in got) == 8
        assert api.process.wait(timeout=15) in (0, -signal.SIGTERM), api.log()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api.url}/healthz", timeout=2)


def test_errors_come_as_problems_before_the_stream_starts(
    server: Server, caller: Caller, pg_engine: sa.Engine
) -> None:
    run_id = start_run(server, caller, "task:echo")
    stranger = new_caller(AccessService(pg_engine), "stranger")
    cases = [
        (f"/runs/{run_id}/stream", {}, 401),
        (f"/runs/{run_id}/stream", stranger.headers, 404),
        ("/runs/run_missing/stream", caller.headers, 404),
        (f"/runs/{run_id}/stream", {**caller.headers, "Last-Event-ID": "soon"}, 400),
        (f"/runs/{run_id}/stream?after_event_id=-1", caller.headers, 400),
    ]
    for path, headers, status in cases:
        response = httpx.get(f"{server.url}{path}", headers=headers, timeout=10)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
