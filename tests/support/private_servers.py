"""A PostgreSQL cluster and a ``redis-server`` of one test (or one benchmark) alone, on free
loopback ports, so that restarting, stopping or stalling them disturbs nothing else.

PostgreSQL: ``initdb`` and ``pg_ctl`` from PATH (Debian's postgresql package); they refuse to
run as root, so as root they run as the ``postgres`` user, in a directory it owns.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

import redis
import sqlalchemy as sa

from runs.cli.embedded import free_port, redis_server_binary


def postgres_tools_missing() -> str | None:
    """Why a private cluster cannot be made here, or None."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (Debian: apt-get install postgresql)"
    return None


class PrivatePostgres:
    """A cluster of its own: ``start``, ``restart(mode)``, ``stop``, ``stalled()``."""

    def __init__(self) -> None:
        # Not under pytest's temporary folders: those are closed to the postgres user.
        self.directory = Path(tempfile.mkdtemp(prefix="runs-pg-"))
        self.data = self.directory / "data"
        self.port = free_port(0)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.directory, "postgres")

    def _run(self, *argv: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else list(argv)
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )

    def start(self) -> None:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        log = str(self.directory / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l", log, "-w", "start")

    def restart(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """``pg_ctl restart -m mode``: every connection is dropped, and the server is back."""
        log = str(self.directory / "postgres.log")
        self._run(
            "pg_ctl", "-D", str(self.data), "-m", mode, "-o", self._options(), "-l", log,
            "-w", "restart",
        )  # fmt: skip

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        with suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def pids(self) -> list[int]:
        """The postmaster and every process it started."""
        head = int((self.data / "postmaster.pid").read_text().split()[0])
        found = [head]
        for children in Path(f"/proc/{head}/task").glob("*/children"):
            with suppress(OSError):
                found += [int(p) for p in children.read_text().split()]
        return found

    @contextmanager
    def stalled(self) -> Iterator[None]:
        """Every process of the cluster stopped (SIGSTOP) until the block ends: connections
        stay open and statements hang, as on a network stall."""
        stopped = self.pids()
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in stopped:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def create_database(self, name: str) -> str:
        """A new database of the cluster; its URL."""
        admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` of its own. Without ``appendonly`` a restart comes back empty; with
    it (as compose runs Redis) it comes back with what it had."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.port = free_port(0)
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
            ],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            deadline = time.monotonic() + 10
            while True:
                assert self.process.poll() is None, "private redis-server exited"
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                    assert time.monotonic() < deadline, "private redis-server did not answer"
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """A clean stop (SIGTERM): with ``appendonly``, everything written is kept."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def crash(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def keys(self) -> int:
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return int(client.dbsize())
        finally:
            client.close()
