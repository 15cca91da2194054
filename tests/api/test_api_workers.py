"""`runs api --workers 2` over real sockets: two processes behind one port, each with its own app
and the HTTP limits, the metrics summed over both, and SIGTERM to the parent ends them all.

Which process served a connection is read from /proc (the process holding the accepted socket),
never from anything the API would have to tell.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from runs.cli.embedded import free_port
from runs.services.access import AccessService
from tests.support.api_support import Caller, new_caller
from tests.support.helpers import create_body
from tests.support.redis_hygiene import own

pytestmark = pytest.mark.worker  # starts real server processes

MAX_URL_BYTES = 2048


@dataclass
class Api:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The serving processes: the parent's spawned children, not its resource tracker."""
        return [
            pid
            for pid in children(self.process.pid)
            if "spawn_main" in cmdline(pid) and "resource_tracker" not in cmdline(pid)
        ]


@pytest.fixture
def caller(pg_engine: sa.Engine) -> Caller:
    return new_caller(AccessService(pg_engine), "api-workers")


@contextmanager
def two_workers(postgres_url: str, redis_url: str, tmp: Path, repo_root: Path) -> Iterator[Api]:
    """`runs api --workers 2` in a session of its own, both processes started; stopped at the
    end (SIGTERM), and whatever is left of its process group then killed."""
    port = free_port(0)
    log_path = tmp / f"api-{port}.log"
    environment = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RUNS_") and k != "PROMETHEUS_MULTIPROC_DIR"
        },
        "RUNS_DATABASE_URL": postgres_url,
        "RUNS_REDIS_URL": redis_url,
        "RUNS_DEFAULT_QUEUE": own("api-workers"),
        "RUNS_AUTH_CACHE_SECONDS": "0",
        "RUNS_HTTP_MAX_URL_BYTES": str(MAX_URL_BYTES),
        "RUNS_LOG_LEVEL": "INFO",
    }
    argv = [sys.executable, "-m", "runs.cli", "api", "--port", str(port), "--workers", "2"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=repo_root,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = Api(port, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while api.log().count("Application startup complete") < 2:
            assert process.poll() is None, api.log()
            assert time.monotonic() < deadline, api.log()
            time.sleep(0.1)
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in group(process.pid):
            os.kill(pid, signal.SIGKILL)


def test_two_processes_share_the_port_each_with_the_http_limits_and_metrics_sum_both(
    postgres_url: str, redis_url: str, tmp_path: Path, repo_root: Path, caller: Caller
) -> None:
    with two_workers(postgres_url, redis_url, tmp_path, repo_root) as api:
        workers = api.workers()
        assert len(workers) == 2, (children(api.process.pid), api.log())
        for pid in workers:  # each process configured its logging (a spawned one starts bare)
            assert f"Started server process [{pid}]" in api.log()

        served: dict[int, int] = {}
        created = 0
        # New connections until both processes accepted one: the kernel hands each to whichever
        # process accepts first, often the same one many times in a row.
        for _ in range(200):
            connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
            try:
                body = json.dumps(create_body(caller.project))
                connection.request("POST", "/runs", body, caller.headers)
                answer = connection.getresponse()
                assert answer.status == 202, answer.read()
                answer.read()
                created += 1
                owner = holder(api.port, connection.sock.getsockname()[1], workers)
                served[owner] = served.get(owner, 0) + 1
                # The limits hold in the process that owns the connection.
                connection.request("GET", "/runs?" + "a" * MAX_URL_BYTES)
                refused = connection.getresponse()
                assert refused.status == 414, refused.read()
                assert refused.getheader("content-type") == "application/problem+json"
                refused.read()
            finally:
                connection.close()
            if len(served) == 2:
                break
        assert set(served) == set(workers), served

        # Whichever process answers the scrape counts the runs both created.
        for _ in range(4):
            samples = scrape(f"http://127.0.0.1:{api.port}/metrics")
            assert samples[("runs_created_total", "task:echo")] == created, samples
        directory = Path(environ(workers[0])["PROMETHEUS_MULTIPROC_DIR"])
        assert {f"counter_{pid}.db" for pid in workers} <= {p.name for p in directory.iterdir()}

    assert not directory.exists()  # the parent removed it when it stopped


def test_sigterm_to_the_parent_ends_every_process_within_seconds(
    postgres_url: str, redis_url: str, tmp_path: Path, repo_root: Path, caller: Caller
) -> None:
    with two_workers(postgres_url, redis_url, tmp_path, repo_root) as api:
        # A kept-alive connection is open, idle, when the signal comes.
        with httpx.Client(base_url=f"http://127.0.0.1:{api.port}", headers=caller.headers) as c:
            assert c.post("/runs", json=create_body(caller.project)).status_code == 202
            members = group(api.process.pid)
            assert len(members) >= 3, members  # the parent and its two processes
            began = time.monotonic()
            api.process.send_signal(signal.SIGTERM)
            api.process.wait(timeout=10)
            while group(api.process.pid) and time.monotonic() - began < 10:
                time.sleep(0.05)
            took = time.monotonic() - began
        assert group(api.process.pid) == [], api.log()
        assert took < 5, (took, api.log())
        assert "Received SIGTERM" in api.log()


# -- /proc -----------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command: state, ppid, pgrp, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), stat_fields(int(entry.name))
            except OSError:
                continue


def children(pid: int) -> list[int]:
    return [child for child, fields in processes() if int(fields[1]) == pid]


def group(pgid: int) -> list[int]:
    """The live processes (zombies aside) of the process group ``pgid``."""
    return [pid for pid, fields in processes() if int(fields[2]) == pgid and fields[0] != "Z"]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def holder(server_port: int, client_port: int, pids: list[int]) -> int:
    """The process among ``pids`` that holds the server's end of a local TCP connection."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if local.endswith(f":{server_port:04X}") and remote.endswith(f":{client_port:04X}"):
            inode = fields[9]
    assert inode is not None, (server_port, client_port)
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no process of {pids} holds socket {inode}")


def scrape(url: str) -> dict[tuple[str, str], float]:
    """runs_created_total per target, as one scrape answers it."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, sample.labels.get("target", "")): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "runs_created_total"
    }
