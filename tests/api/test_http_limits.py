"""The HTTP server of `runs api` against hostile clients, over real sockets (runs/api/server.py).

Each limit answers with a problem and closes the connection: 431 for a header line or a head too
large, 414 for a URL, 408 for a head or a body that does not arrive in time, 503 past the
connection cap, 400 for malformed HTTP. An oversized body sent in full before reading gets its
413, a 500 closes its connection cleanly, and unfinished 50 MB headers cost the server almost no
memory while /healthz keeps answering.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from runs.services.access import AccessService
from tests.support.api_support import Caller, corrupt_event_stream, new_caller
from tests.support.helpers import create_body
from tests.support.server_support import Server, serving

pytestmark = pytest.mark.worker  # starts real server processes

LIMITS = {
    "RUNS_HTTP_MAX_HEADER_LINE_BYTES": "4096",
    "RUNS_HTTP_MAX_HEADER_BYTES": "16384",
    "RUNS_HTTP_MAX_URL_BYTES": "2048",
    "RUNS_HTTP_HEADER_TIMEOUT_SECONDS": "1",
    "RUNS_HTTP_BODY_IDLE_TIMEOUT_SECONDS": "1",
    "RUNS_HTTP_BODY_TIMEOUT_SECONDS": "2.5",
    "RUNS_HTTP_KEEP_ALIVE_SECONDS": "1",
    "RUNS_HTTP_MAX_CONNECTIONS": "40",
    "RUNS_MAX_BODY_BYTES": "1048576",
}


@pytest.fixture(scope="module")
def server(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory, repo_root: Path
) -> Iterator[Server]:
    with serving(
        postgres_url, redis_url, tmp_path_factory.mktemp("http"), repo_root, **LIMITS
    ) as started:
        yield started


@pytest.fixture
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "http")


# -- raw HTTP ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None
    headers: dict[str, str]
    body: bytes
    ended: str  # "closed" (FIN), "reset", or "open" (still open when we stopped waiting)
    seconds: float

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == "application/problem+json", self
        body: dict[str, Any] = json.loads(self.body)
        assert body["status"] == self.status and body["detail"], body
        return body


def exchange(
    port: int, data: bytes = b"", *, wait: float = 5.0, then: bytes = b"", pause: float = 0
) -> Answer:
    """Send ``data`` (and ``then`` after ``pause``), then read until the server closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        try:
            sock.sendall(data)
            if then:
                time.sleep(pause)
                sock.sendall(then)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(wait)
        raw = b""
        ended = "closed"
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except TimeoutError:
            ended = "open"
        except ConnectionResetError:
            ended = "reset"
    return parse(raw, ended, time.monotonic() - started)


def parse(raw: bytes, ended: str, seconds: float) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body, ended, seconds)


def get(path: str = "/healthz", *headers: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(headers) + b"\r\n"


# -- header and URL sizes ------------------------------------------------------------------


def test_a_header_line_over_the_limit_is_a_431_problem_and_one_under_it_is_served(
    server: Server,
) -> None:
    fits = exchange(server.port, get("/healthz", b"X-A: " + b"a" * 3000 + b"\r\n"), wait=2)
    assert fits.status == 200
    too_long = exchange(server.port, get("/healthz", b"X-A: " + b"a" * 5000 + b"\r\n"))
    assert too_long.status == 431 and too_long.ended == "closed"
    assert "header line" in too_long.problem()["detail"]


def test_a_request_head_over_the_limit_is_a_431_problem(server: Server) -> None:
    many = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 90) for i in range(200))  # 20 KB in all
    answer = exchange(server.port, get("/healthz", many))
    assert answer.status == 431 and answer.ended == "closed"
    assert "request head" in answer.problem()["detail"]


def test_a_url_over_the_limit_is_a_414_problem(server: Server) -> None:
    for size in (3000, 70_000, 1_000_000):
        answer = exchange(server.port, get("/healthz?q=" + "a" * size))
        assert answer.status == 414, size
        answer.problem()


def test_malformed_http_gets_a_400_problem_not_plain_text(server: Server) -> None:
    two_lengths = (
        b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}"
    )
    for request in (two_lengths, b"NOT HTTP AT ALL\r\n\r\n", get("/healthz", b"Bad Name: y\r\n")):
        answer = exchange(server.port, request)
        assert answer.status == 400, request
        answer.problem()


# -- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /healthz HTTP/1.1\r\nX-Slow: aaa"],
    ids=["nothing sent", "head without its end", "header line without its end"],
)
def test_a_request_head_that_does_not_arrive_in_time_is_a_408_problem(
    server: Server, data: bytes
) -> None:
    answer = exchange(server.port, data, wait=5)
    assert answer.status == 408 and answer.ended == "closed"
    assert 0.9 < answer.seconds < 3, answer.seconds
    assert "head" in answer.problem()["detail"]


def test_a_body_that_pauses_is_a_408_problem(server: Server, caller: Caller) -> None:
    head = (
        b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + caller.token.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    answer = exchange(server.port, head + b'{"kind":', wait=5)
    assert answer.status == 408 and answer.ended == "closed"
    assert 0.9 < answer.seconds < 3, answer.seconds
    assert "paused" in answer.problem()["detail"]
    assert "unhandled error" not in server.log()


def test_a_body_that_trickles_past_its_deadline_is_a_408_problem(server: Server) -> None:
    head = b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    started = time.monotonic()
    answer: list[Answer] = []

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)
        sock.settimeout(0.4)
        raw = b""
        while time.monotonic() - started < 6:
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            raw += chunk
        answer.append(parse(raw, "closed", time.monotonic() - started))
    assert answer[0].status == 408
    assert 2.4 < answer[0].seconds < 4, answer[0].seconds
    assert "did not arrive within" in answer[0].problem()["detail"]


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    server: Server,
) -> None:
    answer = exchange(server.port, get() + get(), wait=5)
    assert answer.body.count(b'{"status":"ok"}') == 2, "two requests on one connection"
    assert answer.ended == "closed" and 0.9 < answer.seconds < 3


# -- connections ---------------------------------------------------------------------------


def test_connections_past_the_maximum_get_a_503_problem_until_one_is_freed(
    server: Server,
) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
    try:
        time.sleep(0.2)
        refused = exchange(server.port, get())
        assert refused.status == 503
        assert "too many open connections" in refused.problem()["detail"]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert exchange(server.port, get(), wait=2).status == 200


def test_unfinished_50mb_headers_cost_under_20mb_and_healthz_keeps_answering(
    server: Server,
) -> None:
    """The probe that once grew the API from 103 MB to 503 MB before any authentication."""
    before = server.rss_mb()
    peak = before
    stop = threading.Event()

    def attack() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * (1 << 20)
            try:
                for _ in range(50):
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            stop.wait(3)

    attackers = [threading.Thread(target=attack) for _ in range(8)]
    for thread in attackers:
        thread.start()
    latencies = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        peak = max(peak, server.rss_mb())
        started = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    stop.set()
    for thread in attackers:
        thread.join(timeout=10)
    assert peak - before < 20, f"RSS grew from {before:.1f} MB to {peak:.1f} MB"
    assert max(latencies) < 0.5, latencies


# -- answers while a body is still on its way ----------------------------------------------


def test_an_oversized_body_sent_in_full_before_reading_still_gets_its_413(
    server: Server, caller: Caller
) -> None:
    """urllib sends the whole body, then reads: it must find the 413, not a reset."""
    body = json.dumps(create_body(caller.project, config={"blob": "x" * 2_000_000})).encode()
    for _ in range(10):
        request = urllib.request.Request(
            f"{server.url}/runs",
            data=body,
            headers={"Authorization": f"Bearer {caller.token}", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 413
        assert refused.value.headers["content-type"] == "application/problem+json"
        assert "exceeds" in json.loads(refused.value.read())["detail"]


def test_after_a_500_the_connection_closes_cleanly_and_the_next_request_succeeds(
    server: Server, caller: Caller, redis_url: str
) -> None:
    """A live run's event stream that Redis cannot read (a corrupt key): a 500. The client's
    kept-alive connection must not be reset under its next request."""
    with httpx.Client(base_url=server.url, headers=caller.headers) as client:
        created = client.post("/runs", json=create_body(caller.project))
        assert created.status_code == 202, created.text
        run_id = created.json()["run"]["run_id"]
        with corrupt_event_stream(redis_url, caller.project.id, run_id):
            failed = client.get(f"/runs/{run_id}/events")
            assert failed.status_code == 500
            assert failed.headers["connection"] == "close"
            problem = failed.json()
            assert problem["request_id"] in server.log()
            assert client.get(f"/runs/{run_id}").status_code == 200
            authorization = b"Authorization: Bearer " + caller.token.encode() + b"\r\n"
            raw = exchange(server.port, get(f"/runs/{run_id}/events", authorization))
    assert raw.status == 500 and raw.ended == "closed"
