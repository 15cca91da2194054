"""``runs dev``: the whole system on embedded defaults (SQLite, a bundled Redis, the API, a
worker and a scheduler), supervised from one process.

The children's output reaches the terminal through this process (``OutputRelay``), so that the
"runs dev is up" block comes last: once every child is ready and has gone quiet."""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from runs.cli.embedded import free_port, start_redis
from runs.domain.errors import NotFound, Unauthenticated
from runs.persistence import migrate
from runs.persistence.engine import create_engine
from runs.services.access import AccessService
from runs.services.catalog import DefinitionCatalog
from runs.settings import Settings

DEMO_SLUG = "demo"


@dataclass(frozen=True)
class DevInfo:
    api_url: str
    project_id: str
    project_slug: str
    token: str
    redis_url: str  # the bundled Redis: the admin commands send their runs' jobs there

    def as_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def demo_credentials(settings: Settings, info_file: Path, api_url: str) -> DevInfo:
    """The demo project and a token for it; reuses the token in ``info_file`` while valid."""
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        access = AccessService(engine)
        try:
            project = access.find_project(DEMO_SLUG)
        except NotFound:
            project = access.create_project(DEMO_SLUG, "Demo project")
        token = None
        if info_file.exists():
            saved = json.loads(info_file.read_text()).get("token")
            try:
                if saved and access.authenticate(saved).id == project.id:
                    token = saved
            except Unauthenticated:
                token = None
        if token is None:
            _, token = access.create_token(DEMO_SLUG, name="runs dev")
    finally:
        engine.dispose()
    return DevInfo(
        api_url=api_url,
        project_id=project.id,
        project_slug=project.slug,
        token=token,
        redis_url=settings.redis_url,
    )


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a token), replacing it atomically."""
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(partial, 0o600)  # O_CREAT keeps the mode of a file left from an earlier run
    os.replace(partial, path)


def port_in_use(host: str, port: int) -> bool:
    """Whether the API could not bind ``host:port`` because something listens there already
    (bound as uvicorn binds it, so a socket lingering in TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def port_in_use_message(host: str, port: int) -> str:
    """One line: the port that is taken, and how to choose another."""
    spare = next(
        (p for p in range(port + 1, min(port + 100, 65536)) if not port_in_use(host, p)), None
    )
    other = str(spare) if spare is not None else "…"
    return (
        f"runs dev: port {port} on {host} is in use; choose another port for the API with "
        f"`make dev PORT={other}` or `runs dev --port {other}`"
    )


def wait_for_targets(settings: Settings, processes: list[subprocess.Popen[bytes]]) -> list[str]:
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        catalog = DefinitionCatalog(engine, cache_seconds=0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _check_alive(processes)
            targets = [d.target for d in catalog.list()]
            if targets:
                return targets
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise RuntimeError("the worker registered no definitions within 60 s")


def wait_for_api(url: str, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _check_alive(processes)
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not become ready at {url} within 30 s")


class OutputRelay:
    """Copies the output of children to this process's stdout, line by line, and notes when
    the last line came."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_line = time.monotonic()
        self.ready = threading.Event()  # a child wrote the line ``start``'s ``ready`` names

    def start(
        self, argv: list[str], env: dict[str, str], *, ready: bytes | None = None
    ) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert child.stdout is not None
        threading.Thread(target=self._copy, args=(child.stdout, ready), daemon=True).start()
        return child

    def _copy(self, stream: IO[bytes], ready: bytes | None) -> None:
        for line in iter(stream.readline, b""):
            with self._lock:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
                self.last_line = time.monotonic()
            if ready is not None and ready in line:
                self.ready.set()

    def wait_quiet(self, seconds: float = 0.5, at_most: float = 10.0) -> None:
        """Until no child has written for ``seconds`` (at most ``at_most`` seconds)."""
        deadline = time.monotonic() + at_most
        while time.monotonic() - self.last_line < seconds and time.monotonic() < deadline:
            time.sleep(0.05)


def _check_alive(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with code {process.returncode}")


def run_dev(
    settings: Settings,
    *,
    data_dir: Path,
    host: str,
    port: int,
    workers: int,
    redis_port: int,
    flower: bool = False,
) -> int:
    if port_in_use(host, port):
        print(port_in_use_message(host, port), file=sys.stderr, flush=True)
        return 1
    api_url = f"http://{host}:{port}"
    print(f"runs dev: starting; the API will listen on {api_url}", flush=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    redis_port = free_port(redis_port)
    redis_process = start_redis(data_dir / "redis", redis_port)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    # The bundled Redis is a single one: the event log is never on a cluster here.
    update = {"redis_url": redis_url, "broker_url": None, "redis_cluster": False}
    settings = settings.model_copy(update=update)
    env = {
        "RUNS_SOURCE_SCHEDULES_PROJECT": DEMO_SLUG,
        **os.environ,
        "RUNS_DATABASE_URL": settings.database_url,
        "RUNS_REDIS_URL": redis_url,
        "RUNS_BROKER_URL": redis_url,
        "RUNS_REDIS_CLUSTER": "false",
    }
    children: list[subprocess.Popen[bytes]] = [redis_process]
    relay = OutputRelay()
    try:
        migrate.upgrade(settings.database_url)
        # The demo project exists before the worker syncs the schedules written in code.
        info = demo_credentials(settings, data_dir / "dev.json", api_url)
        worker = _start_worker(relay, env, settings, workers)
        # dev.json before the API starts: whoever sees /healthz answer can read it already.
        write_private(data_dir / "dev.json", info.as_json() + "\n")
        api = relay.start(
            [sys.executable, "-m", "runs.cli", "api", "--host", host, "--port", str(port)], env
        )
        scheduler = relay.start([sys.executable, "-m", "runs.cli", "scheduler"], env)
        children += [worker, api, scheduler]
        flower_line = _start_flower(settings, env, host, children, relay) if flower else ""
        targets = wait_for_targets(settings, children)
        wait_for_api(api_url, children)
        relay.ready.wait(timeout=60)
        relay.wait_quiet()  # the children's start-up lines first, then the block
        _print_banner(info, targets, data_dir / "dev.json", flower_line)
        return _supervise(children)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(children)


def _start_worker(
    relay: OutputRelay, env: dict[str, str], settings: Settings, workers: int
) -> subprocess.Popen[bytes]:
    """The worker of every routed queue, its output relayed; ``relay.ready`` once it consumes."""
    queues = ",".join(dict.fromkeys([settings.default_queue, *settings.routes.values()]))
    argv = [sys.executable, "-m", "runs.cli", "worker", "--concurrency", str(workers)]
    argv += ["--queues", queues, "--hostname", "dev@%h"]
    return relay.start(argv, env, ready=b" ready.")  # Celery's line once it consumes


def _start_flower(
    settings: Settings,
    env: dict[str, str],
    host: str,
    children: list[subprocess.Popen[bytes]],
    relay: OutputRelay,
) -> str:
    """Start ``runs flower`` as another child; its banner line. Basic auth is
    RUNS_FLOWER_BASIC_AUTH, else a user ``dev`` with a new password."""
    secret = settings.flower_basic_auth
    auth = secret.get_secret_value() if secret else f"dev:{secrets.token_urlsafe(12)}"
    flower_port = free_port(5555, host)
    children.append(
        relay.start(
            [
                sys.executable,
                "-m",
                "runs.cli",
                "flower",
                "--address",
                host,
                "--port",
                str(flower_port),
            ],
            {**env, "RUNS_FLOWER_BASIC_AUTH": auth},
        )
    )
    user, _, password = auth.split(",")[0].partition(":")
    return f"  Flower:       http://{host}:{flower_port}   (user {user}, password {password})\n"


def _print_banner(
    info: DevInfo, targets: list[str], info_file: Path, flower_line: str = ""
) -> None:
    print(
        "\nruns dev is up\n"
        f"  web view:     {info.api_url}/ui   (sign in with the token below)\n"
        f"  API:          {info.api_url}   (OpenAPI at {info.api_url}/docs)\n"
        f"  project id:   {info.project_id}\n"
        f"  project slug: {info.project_slug}\n"
        f"  token:        {info.token}\n"
        f"  targets:      {', '.join(targets)}\n"
        "  scheduler:    running (schedules: /projects/{ref}/schedules)\n"
        f"{flower_line}"
        f"  (also in {info_file})\n\n"
        "Try:\n"
        f"  curl -s -X POST {info.api_url}/runs -H 'Authorization: Bearer {info.token}' \\\n"
        "    -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"kind":"task","owner":{{"kind":"project","id":"{info.project_id}"}},'
        '"request":{"target":"task:echo","config":{"hello":"world"}}}\'\n\n'
        "Ctrl-C stops everything.\n",
        flush=True,
    )


def _supervise(children: list[subprocess.Popen[bytes]]) -> int:
    stop = False

    def on_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    # Ctrl-C reaches every process of the terminal's group at once: the children stopping
    # then is the clean stop it asks for, not a failure.
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    while not stop:
        for child in children:
            if child.poll() is not None:
                print(f"runs dev: {child.args!r} exited ({child.returncode}); stopping", flush=True)
                return 1
        time.sleep(0.5)
    return 0


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 15
    for child in reversed(children):
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
