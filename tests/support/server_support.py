"""A real `runs api` process for the tests that need real sockets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from runs.cli.embedded import free_port
from tests.support.redis_hygiene import own


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    postgres_url: str, redis_url: str, tmp: Path, repo_root: Path, **env: str
) -> Server:
    port = free_port(0)
    log_path = tmp / f"api-{port}.log"
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNS_")},
        "RUNS_DATABASE_URL": postgres_url,
        "RUNS_REDIS_URL": redis_url,
        "RUNS_DEFAULT_QUEUE": own("http-limits"),
        "RUNS_AUTH_CACHE_SECONDS": "0",
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runs.cli", "api", "--port", str(port)],
            cwd=repo_root,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(port, process, log_path)
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, server.log()
        assert time.monotonic() < deadline, server.log()
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)


@contextmanager
def serving(
    postgres_url: str, redis_url: str, tmp: Path, repo_root: Path, **env: str
) -> Iterator[Server]:
    """``start_server``, stopped when the block ends (whatever the block raised)."""
    server = start_server(postgres_url, redis_url, tmp, repo_root, **env)
    try:
        yield server
    finally:
        stop_server(server)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
