"""Serving Prometheus metrics from a process other than the API: a worker's main process (for
its whole pool) or a scheduler.

A prefork pool's processes each count in a file of their own under ``PROMETHEUS_MULTIPROC_DIR``
(prometheus-client's multiprocess mode), and the main process sums the files when scraped. The
variable must be set before any process of the pool imports ``runs.observability.metrics``, and the directory
emptied at each start: ``runs worker`` does both before it starts Celery (``worker_env``).
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from runs.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir(settings: Settings, port: int) -> Path:
    """Where a worker's processes keep their values: RUNS_WORKER_METRICS_DIR, else
    PROMETHEUS_MULTIPROC_DIR, else a folder of the system's temporary directory per port."""
    if settings.worker_metrics_dir is not None:
        return settings.worker_metrics_dir
    if os.environ.get(MULTIPROC_ENV):
        return Path(os.environ[MULTIPROC_ENV])
    return Path(tempfile.gettempdir()) / f"runs-worker-metrics-{port}"


def emptied(directory: Path) -> Path:
    """``directory``, created, without the values files of an earlier start."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return directory


def worker_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment a worker serving metrics on ``port`` starts with (its directory emptied)."""
    directory = emptied(multiprocess_dir(settings, port))
    return {MULTIPROC_ENV: str(directory), "RUNS_WORKER_METRICS_PORT": str(port)}


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry that sums the values every process wrote under ``directory``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def process_exited(pid: int) -> None:
    """Drop what only a live process reports (live gauges) once the process ``pid`` exited."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


@dataclass
class MetricsServer:
    """prometheus-client's HTTP server in a daemon thread; any path answers the metrics."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
