"""The FastAPI app factory. Engines and clients are built at start-up, never at import."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from runs import __version__
from runs.api import health, routes, schedule_routes, stream_routes, ui
from runs.api.creates import CreateFastLane
from runs.api.deps import Services
from runs.api.errors import UnexpectedErrors, install_error_handlers
from runs.api.limits import BodySizeLimit
from runs.api.metrics import ApiMetrics, install_metrics
from runs.api.openapi import install_openapi
from runs.api.responses import JSONResponse
from runs.settings import Settings
from runs.streams.feeds import RunFeeds
from runs.streams.following import EventFollower
from runs.wiring import wire


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        wired = wire(
            settings,
            pool_size=settings.database_pool_size,
            auth_cache_seconds=settings.auth_cache_seconds,
        )
        app.state.engine = wired.engine
        app.state.events = wired.events
        app.state.metrics = ApiMetrics.build(settings, wired.engine)
        follower = _follower(settings)
        app.state.services = Services(
            settings=settings,
            runs=wired.runs,
            access=wired.access,
            catalog=wired.catalog,
            workflows=wired.workflows,
            schedules=wired.schedules,
            follower=follower,
            feeds=RunFeeds(
                follower, stream_routes.frame, block_seconds=settings.sse_heartbeat_seconds
            ),
        )
        # What start-up built lives as long as the process: out of the collector's sight,
        # its full collections no longer walk it (shorter pauses on every request's tail).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await follower.close()
            app.state.metrics.close()
            wired.close()

    app = FastAPI(
        title="runs",
        version=__version__,
        description="Durable, project-scoped task and workflow runs (the Veryfront Runs API).",
        lifespan=lifespan,
        redirect_slashes=False,
        default_response_class=JSONResponse,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(routes.router)
    app.include_router(stream_routes.router)
    app.include_router(schedule_routes.router)
    app.include_router(ui.router)
    install_openapi(app, max_page_size=settings.max_page_size)
    app.add_middleware(CreateFastLane, route=routes.create_run_route())  # inside the body limit
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(UnexpectedErrors)
    if settings.api_metrics:
        install_metrics(app)
    return app


def _follower(settings: Settings) -> EventFollower:
    """The reader of live event streams, on the event log's Redis or Redis Cluster."""
    return EventFollower.from_url(
        settings.redis_url,
        longest_block_seconds=settings.sse_heartbeat_seconds,
        followers=settings.http_max_connections,
        cluster=settings.redis_cluster,
    )


def create_app_from_env() -> FastAPI:
    """Entry point for ``uvicorn --factory runs.api.app:create_app_from_env``."""
    return create_app(Settings())
