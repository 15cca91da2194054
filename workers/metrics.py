"""A worker's Prometheus endpoint: its main process serves the sum of what every process of
its pool recorded (prometheus-client's multiprocess mode, ``runs.observability.metrics_server``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

from runs.observability.metrics_server import (
    MULTIPROC_ENV,
    MetricsServer,
    multiprocess_registry,
    process_exited,
    serve_metrics,
)
from runs.settings import Settings

log = logging.getLogger(__name__)


def install_metrics(app: Celery, settings: Settings) -> None:
    """Serve metrics on RUNS_WORKER_METRICS_PORT once the worker is ready (nothing when unset)."""
    port = settings.worker_metrics_port
    if port is None:
        return
    served: list[MetricsServer] = []

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            log.error(
                "metrics not served: RUNS_WORKER_METRICS_PORT needs %s set to an empty "
                "directory before the worker starts (`runs worker --metrics-port` does it)",
                MULTIPROC_ENV,
            )
            return
        try:
            served.append(
                serve_metrics(settings.metrics_host, port, multiprocess_registry(directory))
            )
        except OSError:
            log.exception("metrics not served: cannot listen on %s:%d", settings.metrics_host, port)
            return
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)

    def on_worker_process_shutdown(pid: int | None = None, **_: Any) -> None:
        process_exited(pid if pid is not None else os.getpid())

    def on_worker_shutdown(**_: Any) -> None:
        for server in served:
            server.close()

    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_process_shutdown.connect(on_worker_process_shutdown, weak=False)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False)
