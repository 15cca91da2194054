"""The FastAPI app factory. Engines and clients are built at start-up, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from runs import __version__
from runs.access import AccessService
from runs.api import health, routes
from runs.api.deps import Services
from runs.api.errors import install_error_handlers
from runs.api.limits import BodySizeLimit
from runs.catalog import DefinitionCatalog
from runs.dispatch import CeleryDispatcher
from runs.events import RedisEventLog
from runs.persistence.engine import create_engine
from runs.routing import Router
from runs.service import RunService
from runs.settings import Settings
from runs.workflow_state import WorkflowState


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        events = RedisEventLog.from_url(
            settings.redis_url, ttl_seconds=settings.event_stream_ttl_seconds
        )
        dispatcher = CeleryDispatcher.from_settings(settings)
        catalog = DefinitionCatalog(engine, cache_seconds=settings.target_cache_seconds)
        router = Router(settings.route_table, settings.default_queue)
        runs = RunService(
            engine,
            dispatcher=dispatcher,
            events=events,
            router=router,
            catalog=catalog,
            max_input_bytes=settings.max_input_bytes,
        )
        app.state.engine = engine
        app.state.events = events
        app.state.services = Services(
            settings=settings,
            runs=runs,
            access=AccessService(engine, cache_seconds=settings.auth_cache_seconds),
            catalog=catalog,
            workflows=WorkflowState(engine, runs=runs, events=events, dispatcher=dispatcher),
        )
        try:
            yield
        finally:
            dispatcher.close()
            events.client.close()
            engine.dispose()

    app = FastAPI(
        title="runs",
        version=__version__,
        description="Durable, project-scoped task and workflow runs (the Veryfront Runs API).",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(routes.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def create_app_from_env() -> FastAPI:
    """Entry point for ``uvicorn --factory runs.api.app:create_app_from_env``."""
    return create_app(Settings())
