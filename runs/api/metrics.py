"""``GET /metrics`` (Prometheus text format, unauthenticated like /healthz) and the middleware
that counts HTTP requests by route template and status.

The scrape answers the counters (``runs.observability.metrics``) and the storage gauges
(``runs.observability.gauges``), read in a thread off the event loop. The counters are this
process's, or, when the API serves from several processes (``runs api --workers N``), the sum of
them all: each process then counts in a file of a directory that the parent made
(``PROMETHEUS_MULTIPROC_DIR``, prometheus-client's multiprocess mode), and whichever process
answers the scrape adds the files up. Per-process series (``process_*``, ``python_gc_*``) are
left out in that mode: no one process speaks for the others.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runs.messaging.routing import Router
from runs.observability import metrics
from runs.observability.gauges import QueueDepth, StatusCounts, StorageGauges, queue_depth_for
from runs.observability.metrics_server import MULTIPROC_ENV, multiprocess_registry
from runs.settings import Settings

router = APIRouter()

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # answered before or without a route: a 404, a 413 of the body limit


@contextmanager
def shared_metrics_dir(*, enabled: bool) -> Iterator[Path | None]:
    """A new, empty directory, set as ``PROMETHEUS_MULTIPROC_DIR`` for the processes started
    in the block (they must be started, not forked: prometheus-client reads the variable at
    import), and removed after it. Made afresh rather than inherited: another program's files,
    or those of an earlier start, would be added to ours. ``enabled`` false: nothing."""
    if not enabled:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="runs-api-metrics-"))
    inherited = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        if inherited is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = inherited
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class ApiMetrics:
    """What an API process exposes: the counters (of every API process, in multiprocess
    mode), then the storage gauges."""

    counters: CollectorRegistry
    gauges: CollectorRegistry
    depth: QueueDepth

    @classmethod
    def build(cls, settings: Settings, engine: sa.Engine) -> ApiMetrics:
        directory = os.environ.get(MULTIPROC_ENV)
        counters = multiprocess_registry(directory) if directory else REGISTRY
        depth = queue_depth_for(settings)
        gauges = CollectorRegistry()
        counts = StatusCounts(engine, cache_seconds=settings.metrics_cache_seconds)
        queues = Router(settings.route_table, settings.default_queue).queues()
        gauges.register(StorageGauges(counts, depth, queues))
        return cls(counters, gauges, depth)

    def render(self) -> bytes:
        return generate_latest(self.counters) + generate_latest(self.gauges)

    def close(self) -> None:
        self.depth.close()


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    exposition: ApiMetrics = request.app.state.metrics
    body = await anyio.to_thread.run_sync(exposition.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class HttpMetrics:
    """Counts each request when its response head goes out, with the time it took to get
    there, labelled by the route template (never the raw path) and the status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        answered = False

        async def timed_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self._record(scope, message["status"], time.perf_counter() - began)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException:
            if not answered:
                self._record(scope, 500, time.perf_counter() - began)
            raise

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "other"
        route = getattr(scope.get("route"), "path", None) or UNMATCHED
        metrics.http_request(method, route, status, seconds)


def install_metrics(app: FastAPI) -> None:
    """The /metrics route and the request counting (outermost, so it sees every answer)."""
    app.include_router(router)
    app.add_middleware(HttpMetrics)
