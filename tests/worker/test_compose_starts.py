"""compose.yaml, started without Docker: every service built from this repository runs its
``command`` here, with its ``environment``, in ``depends_on`` order, and its health check runs as
written; a task run on each worker pool and Flower's view of them show that the parts work
together.

What a container would have is translated, nothing else: the services that are an image only
(postgres, redis) are local ones (a new database on the local PostgreSQL, a private
``redis-server``: the compose workers consume the stock queue names); a service's hostname is
127.0.0.1; ports a service publishes are free local ports; ``/app`` is this checkout and
``/tmp`` a temporary folder; ``HOSTNAME`` is this machine's name (Docker sets it to the
container's); compose's own ``${VAR:-default}`` and ``$$`` are interpolated as compose does,
with none of the variables set.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa
import yaml

from runs.cli.embedded import free_port, start_redis
from tests.conftest import POSTGRES_URL, unavailable

pytestmark = [pytest.mark.worker, pytest.mark.timeout(300)]

COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")
# /app (the image's WORKDIR) and /tmp, at the start of a path.
CONTAINER_FOLDER = re.compile(r"(?<![\w.-])/(app|tmp)/")


def interpolate(value: str) -> str:
    """Compose's interpolation with no variable set: defaults apply, ``$$`` is ``$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return match.group(2) or ""

    return COMPOSE_VARIABLE.sub(substitute, value)


@dataclass
class Local:
    """Where the services that are an image only are found here."""

    postgres_url: str  # a new, empty database
    redis_address: str  # a private redis-server
    app_dir: Path
    tmp_dir: Path
    image_env: dict[str, str]
    ports: dict[str, dict[str, int]] = field(default_factory=dict)  # service -> container -> local

    def url(self, value: str) -> str:
        parts = urlsplit(value)
        if parts.hostname == "postgres":
            local = sa.make_url(self.postgres_url)
            return local.set(drivername=sa.make_url(value).drivername).render_as_string(
                hide_password=False
            )
        if parts.hostname == "redis":
            return urlunsplit(parts._replace(netloc=self.redis_address))
        if parts.hostname in self.ports:
            mapped = self.ports[parts.hostname].get(str(parts.port), parts.port)
            return urlunsplit(parts._replace(netloc=f"127.0.0.1:{mapped}"))
        return value

    def text(self, service: str, value: str) -> str:
        value = interpolate(value)
        if "://" in value:
            value = self.url(value)
        folders = {"app": self.app_dir, "tmp": self.tmp_dir}
        value = CONTAINER_FOLDER.sub(lambda m: f"{folders[m.group(1)]}/", value)
        value = value.replace("0.0.0.0", "127.0.0.1")
        for container, local in self.ports.get(service, {}).items():
            value = re.sub(rf"\b{container}\b", str(local), value)
        return value

    def argv(self, service: str, command: str | list[str]) -> list[str]:
        words = shlex.split(command) if isinstance(command, str) else command
        return [self.text(service, str(word)) for word in words]

    def env(self, service: str, spec: dict[str, Any]) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        declared = {**self.image_env, **{k: str(v) for k, v in (spec or {}).items()}}
        return {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": socket.gethostname(),
            **{k: self.text(service, v) for k, v in declared.items()},
        }


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def image_env(dockerfile: Path) -> dict[str, str]:
    """The ENV lines of the Dockerfile (``ENV NAME=value``)."""
    found = re.findall(r"^ENV (\w+)=(\S*)$", dockerfile.read_text(), flags=re.MULTILINE)
    return dict(found)


def startup_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {[*path, name]}"
        if name in order:
            return
        for dependency in services[name].get("depends_on") or {}:
            visit(dependency, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def healthy(local: Local, name: str, service: dict[str, Any], env: dict[str, str]) -> bool:
    """Run the service's health check once, as written (CMD or CMD-SHELL)."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *rest = test
    if kind == "CMD-SHELL":
        argv = ["/bin/sh", "-c", local.text(name, rest[0])]
    else:
        assert kind == "CMD", f"{name}: health check {test!r}"
        argv = local.argv(name, rest)
    timeout = float(str(service["healthcheck"].get("timeout", "30s")).removesuffix("s"))
    try:
        result = subprocess.run(
            argv, env=env, cwd=local.app_dir, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


@pytest.fixture(scope="module")
def compose(repo_root: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((repo_root / "compose.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def local(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    """A new, empty database (the migrate service creates the tables) and a private Redis."""
    admin_url = sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    name = f"runs_compose_{uuid.uuid4().hex[:10]}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc.orig}")
    folder = tmp_path_factory.mktemp("compose")
    redis_port = free_port(0)
    redis_process = start_redis(folder / "redis", redis_port)
    try:
        yield Local(
            postgres_url=admin_url.set(database=name).render_as_string(hide_password=False),
            redis_address=f"127.0.0.1:{redis_port}",
            app_dir=repo_root,
            tmp_dir=folder,
            image_env=image_env(repo_root / "Dockerfile"),
        )
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def wait_for(what: str, check: Any, timeout: float, started: dict[str, Started]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for other in started.values():
            if other.process.poll() not in (None, 0):
                raise AssertionError(f"{other.name} exited: {other.log()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s.name}\n{s.log()[-3000:]}" for s in started.values())
            raise AssertionError(f"{what} within {timeout} s\n{logs}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(
    compose: dict[str, Any], local: Local, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Started]]:
    """Every service built from this repository, started as compose would start it."""
    services: dict[str, Any] = compose["services"]
    built = {name for name, spec in services.items() if "build" in spec}
    for name, spec in services.items():
        assert name in built or name in ("postgres", "redis"), f"{name}: no local stand-in"
        published = [str(p).rsplit(":", 1)[-1] for p in spec.get("ports") or []]
        local.ports[name] = {port: free_port(0) for port in published}
    logs = tmp_path_factory.mktemp("compose-logs")
    started: dict[str, Started] = {}
    try:
        for name in startup_order(services):
            if name not in built:
                continue
            for dependency, spec in (services[name].get("depends_on") or {}).items():
                if dependency not in built:
                    continue  # a local service, up already
                condition = spec["condition"]
                if condition == "service_completed_successfully":
                    done = started[dependency].process
                    wait_for(f"{dependency} ended", lambda p=done: p.poll() == 0, 120, started)
                elif condition == "service_healthy":
                    env = local.env(dependency, services[dependency].get("environment"))
                    wait_for(
                        f"{dependency} healthy",
                        lambda d=dependency, e=env: healthy(local, d, services[d], e),
                        120,
                        started,
                    )
            spec = services[name]
            log_path = logs / f"{name}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    local.argv(name, spec["command"]),
                    env=local.env(name, spec.get("environment")),
                    cwd=local.app_dir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            started[name] = Started(name, process, log_path)
        yield started
    finally:
        for one in reversed(list(started.values())):
            if one.process.poll() is None:
                one.process.terminate()
        for one in started.values():
            try:
                one.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                one.process.kill()
                one.process.wait()


def test_every_service_starts_in_order_and_passes_its_health_check(
    compose: dict[str, Any], local: Local, stack: dict[str, Started]
) -> None:
    services = compose["services"]
    assert stack["migrate"].process.wait(timeout=120) == 0, stack["migrate"].log()
    checked = [name for name in stack if "healthcheck" in services[name]]
    assert {"api", "worker", "worker-slow", "scheduler", "flower"} <= set(checked)
    for name in checked:
        env = local.env(name, services[name].get("environment"))
        wait_for(
            f"{name} healthy",
            lambda n=name, e=env: healthy(local, n, services[n], e),
            120,
            stack,
        )
    for name, one in stack.items():
        if name != "migrate":
            assert one.process.poll() is None, f"{name} exited: {one.log()}"


def test_runs_complete_on_both_worker_pools_and_flower_shows_them(
    compose: dict[str, Any], local: Local, stack: dict[str, Started]
) -> None:
    services = compose["services"]
    env = local.env("migrate", services["migrate"].get("environment"))

    def runs_command(*args: str) -> str:
        done = subprocess.run(
            ["runs", *args], env=env, cwd=local.app_dir, capture_output=True, check=True
        )
        return done.stdout.decode()

    runs_command("projects", "create", "compose")
    token = runs_command("tokens", "create", "compose").strip().splitlines()[-1]
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{local.ports['api']['8000']}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    project_id = api.get("/whoami").json()["project"]["id"]
    flower_env = local.env("flower", services["flower"].get("environment"))
    user, _, password = flower_env["RUNS_FLOWER_BASIC_AUTH"].partition(":")
    flower = f"http://127.0.0.1:{local.ports['flower']['5555']}"
    assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401

    def run_on_both_pools() -> dict[str, str]:
        """task:echo on the "runs" queue, task:sleep on "slow"; each run's id."""
        run_ids = {}
        for target, config in (("task:echo", {}), ("task:sleep", {"seconds": 0.1})):
            created = api.post(
                "/runs",
                json={
                    "kind": "task",
                    "owner": {"kind": "project", "id": project_id},
                    "request": {"target": target, "config": config},
                },
            )
            assert created.status_code == 202, created.text
            run_ids[target] = created.json()["run"]["run_id"]
        for target, run_id in run_ids.items():
            wait_for(
                f"{target} completed",
                lambda r=run_id: api.get(f"/runs/{r}").json()["status"] == "completed",
                60,
                stack,
            )
        return run_ids

    def workers_flower_saw(run_ids: dict[str, str]) -> dict[str, str]:
        """Target -> the worker node that ran it, as Flower shows the runs' jobs."""
        tasks = httpx.get(f"{flower}/api/tasks", auth=(user, password), timeout=10).json()
        return {
            t["name"]: t["worker"]
            for t in tasks.values()
            if t["state"] == "SUCCESS" and run_ids.get(t["name"], "?") in str(t["args"])
        }

    # Flower sees the jobs that run after its event receiver connected: try until it does.
    deadline = time.monotonic() + 60
    while True:
        run_ids = run_on_both_pools()
        for _ in range(10):
            seen = workers_flower_saw(run_ids)
            if len(seen) == 2:
                break
            time.sleep(0.5)
        if len(seen) == 2 or time.monotonic() > deadline:
            break
    host = socket.gethostname()
    assert seen == {"task:echo": f"runs@{host}", "task:sleep": f"slow@{host}"}
