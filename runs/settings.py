"""One Settings object, read from ``RUNS_*`` environment variables (and an optional .env file).

Build it at an entry point (CLI command, Celery app, test fixture) and pass it down; nothing
reads the environment at import time.
"""

from __future__ import annotations

import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict

# The groups ``runs settings`` shows the settings in.
Group = dict[str, Any]
STORAGE: Group = {"group": "storage and messaging"}
ROUTING: Group = {"group": "definitions and routing"}
API: Group = {"group": "the HTTP API"}
HTTP: Group = {"group": "HTTP limits of `runs api`"}
EVENTS: Group = {"group": "events"}
WORKERS: Group = {"group": "workers"}
RETRIES: Group = {"group": "retries, timeouts and stops"}
SCHEDULES: Group = {"group": "schedules"}
METRICS: Group = {"group": "metrics"}
RETENTION: Group = {"group": "retention and limits"}
LOGS: Group = {"group": "logs and Flower"}


def _in(group: Group, default: Any = PydanticUndefined, /, **rules: Any) -> Any:
    """A setting of ``group``: its default, description and rules (pydantic's ``Field``)."""
    return Field(default, json_schema_extra=group, **rules)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RUNS_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_by_name=True,  # fields with an older variable name too (their alias)
    )

    # -- storage and messaging -------------------------------------------------------------
    database_url: str = _in(
        STORAGE,
        "sqlite:///.runs/runs.db",
        description="SQLAlchemy URL of the run store: SQLite for `runs dev`, PostgreSQL "
        "(postgresql+psycopg://...) in deployments",
    )
    redis_url: str = _in(
        STORAGE,
        "redis://127.0.0.1:6379/0",
        description="Redis of the run event log (a stream per run) and the cancel flags",
    )
    broker_url: str | None = _in(
        STORAGE,
        None,
        description="Celery's broker; unset: the Redis of redis_url. amqp://... for RabbitMQ",
    )
    redis_cluster: bool = _in(
        STORAGE, False, description="redis_url is a node of a Redis Cluster (needs broker_url)"
    )
    database_pool_size: int = _in(
        STORAGE,
        5,
        ge=1,
        description="connections each pool keeps; the API also runs at most this many "
        "blocking calls at once, so that a burst waits for a pooled connection",
    )

    # -- definitions and routing -------------------------------------------------------------
    definitions: list[str] = _in(
        ROUTING,
        default_factory=lambda: ["workers.examples"],
        description="modules whose import registers tasks and workflows (workers load them)",
    )
    default_queue: str = _in(ROUTING, "runs", description="queue of the targets no route matches")
    routes: dict[str, str] = _in(
        ROUTING,
        default_factory=dict,
        description="fnmatch patterns of targets to queues, after the routing file; the first "
        "match wins",
    )
    routing_file: Path | None = _in(
        ROUTING, None, description="TOML file with a [routes] table (config/routing.toml)"
    )

    # -- the HTTP API --------------------------------------------------------------------------
    api_host: str = _in(API, "127.0.0.1", description="address `runs api` binds")
    api_port: int = _in(API, 8000, ge=0, le=65535, description="port `runs api` listens on")
    api_workers: int = _in(
        API, 1, ge=1, description="processes `runs api` serves from on its port, each its own app"
    )
    max_body_bytes: int = _in(
        API, 1_048_576, ge=1024, description="largest request body (413 past it)"
    )
    max_input_bytes: int = _in(
        API,
        262_144,
        ge=16,
        description="largest input, config or metadata of a run, as JSON (413 past it)",
    )
    default_page_size: int = _in(
        API, 20, ge=1, le=100, description="items of a list page without ?limit"
    )
    max_page_size: int = _in(API, 100, ge=1, le=1000, description="largest ?limit of a list page")
    auth_cache_seconds: float = _in(
        API, 5.0, ge=0, description="how long a token's check is kept (a revoke shows this late)"
    )
    target_cache_seconds: float = _in(
        API, 5.0, ge=0, description="how long the list of registered targets is kept"
    )
    http_max_header_line_bytes: int = _in(
        HTTP, 8192, ge=256, description="longest header line (431 past it)"
    )
    http_max_header_bytes: int = _in(
        HTTP, 32_768, ge=1024, description="largest request head (431 past it)"
    )
    http_max_url_bytes: int = _in(
        HTTP, 16_384, ge=256, le=65_535, description="longest URL (414 past it)"
    )
    http_header_timeout_seconds: float = _in(
        HTTP, 10.0, gt=0, description="time to send a request's head (408 past it)"
    )
    http_body_idle_timeout_seconds: float = _in(
        HTTP, 10.0, gt=0, description="longest silence while a body is sent (408 past it)"
    )
    http_body_timeout_seconds: float = _in(
        HTTP, 60.0, gt=0, description="time to send a whole body (408 past it)"
    )
    http_keep_alive_seconds: int = _in(
        HTTP, 5, ge=1, description="how long an idle kept-alive connection stays open"
    )
    http_shutdown_grace_seconds: int = _in(
        HTTP,
        10,
        ge=0,
        description="on SIGTERM, how long requests in flight may go on (event "
        "streams are then cut)",
    )
    http_max_connections: int = _in(
        HTTP, 1000, ge=1, description="open connections per process (503 past it)"
    )
    http_linger_seconds: float = _in(
        HTTP,
        2.0,
        ge=0,
        description="after answering before a body was read (a 413), how long the "
        "rest is read and dropped so that the client reads the answer",
    )
    http_linger_bytes: int = _in(
        HTTP, 16_777_216, ge=0, description="how much of such a body is read and dropped at most"
    )

    # -- events ------------------------------------------------------------------------------
    stream_ttl_seconds: int = _in(
        EVENTS,
        86_400,
        ge=60,
        validation_alias=AliasChoices("RUNS_STREAM_TTL_SECONDS", "RUNS_EVENT_STREAM_TTL_SECONDS"),
        description="how long a finished run's Redis stream is kept (its events stay in SQL); "
        "RUNS_EVENT_STREAM_TTL_SECONDS is the older name, still read",
    )
    sse_heartbeat_seconds: float = _in(
        EVENTS,
        15.0,
        gt=0,
        description="a live event stream sends a comment line this often while no event comes",
    )

    # -- workers -------------------------------------------------------------------------------
    broker_visibility_timeout_seconds: int = _in(
        WORKERS,
        43_200,
        ge=1,
        description="a Redis broker re-delivers an unacknowledged job after this: "
        "it must exceed the longest run (not checked on RabbitMQ, which has no such timeout)",
    )
    worker_lease_seconds: float = _in(
        WORKERS,
        60.0,
        gt=0,
        description="an attempt's lease, renewed every third of it; a run whose "
        "lease lapsed is reclaimed by the sweeper",
    )
    worker_drain_seconds: float = _in(
        WORKERS,
        30.0,
        ge=0,
        description="on SIGTERM, how long running attempts may still end; then "
        "they are stopped and their runs handed back",
    )
    group_max_runs: int = _in(
        WORKERS,
        32,
        ge=1,
        le=1000,
        description="runs of one target created together travel in one job of at most this "
        "many (a lone run goes alone); 1 sends a job per run",
    )
    worker_handoff_ms: float = _in(
        WORKERS,
        50.0,
        gt=0,
        description="once an attempt of a job's group has run this long, the group's runs not "
        "started yet are handed to other pool processes (no run waits long behind a slow one)",
    )
    worker_heartbeat_seconds: float = _in(
        WORKERS, 0.25, gt=0, description="how often a worker looks for cancel flags of its runs"
    )
    worker_event_flush_seconds: float = _in(
        WORKERS,
        0.1,
        ge=0,
        description="task events (what Flower shows) wait this long to be sent together",
    )
    pending_redispatch_seconds: float = _in(
        WORKERS,
        30.0,
        gt=0,
        description="a run still pending after this long gets its job sent again",
    )
    sweep_interval_seconds: float = _in(
        WORKERS,
        10.0,
        gt=0,
        description="how often each worker's sweeper looks for lost and stuck runs",
    )

    # -- retries, timeouts and stops -----------------------------------------------------------
    default_backoff_limit: int = _in(
        RETRIES,
        0,
        ge=0,
        le=100,
        description="retries when neither the run nor its definition says (0: none)",
    )
    retry_backoff_seconds: float = _in(
        RETRIES,
        1.0,
        ge=0,
        description="delay before attempt n+1: min(this * 2^(n-1), the maximum), "
        "jittered down by up to half",
    )
    retry_backoff_max_seconds: float = _in(
        RETRIES, 300.0, ge=0, description="the longest delay before a retry"
    )
    max_timeout_seconds: int = _in(
        RETRIES, 21_600, ge=1, description="every attempt's timeout is capped at this"
    )
    queue_ttl_seconds: float | None = _in(
        RETRIES,
        None,
        gt=0,
        description='a run that waited longer for a worker fails with "expired"',
    )
    cancel_grace_seconds: float = _in(
        RETRIES,
        10.0,
        gt=0,
        description="after a cancel, timeout or lost lease: the cooperative flag, "
        "then this long before the task is interrupted, and as long again before its process "
        "is killed",
    )
    finish_retry_seconds: float = _in(
        RETRIES,
        30.0,
        ge=0,
        description="how long a worker keeps trying to record an outcome while "
        "Redis or the database is unreachable",
    )

    # -- schedules -------------------------------------------------------------------------------
    scheduler_poll_seconds: float = _in(
        SCHEDULES,
        1.0,
        gt=0,
        description="the scheduler looks for due occurrences at least this often",
    )
    scheduler_misfire_grace_seconds: float = _in(
        SCHEDULES,
        10.0,
        ge=0,
        description="an occurrence fired this late is on time; an older one was "
        "missed and its schedule's catch-up decides",
    )
    scheduler_batch_size: int = _in(
        SCHEDULES, 200, ge=1, le=10_000, description="schedules one scheduler fires per transaction"
    )
    scheduler_max_catchup_runs: int = _in(
        SCHEDULES,
        100,
        ge=1,
        description="occurrences one schedule catches up per pass (catchup all)",
    )
    scheduler_heartbeat_file: Path | None = _in(
        SCHEDULES, None, description="a file the scheduler touches every round, for a health check"
    )
    source_schedules_project: str | None = _in(
        SCHEDULES,
        None,
        description="the project (id or slug) that schedules written in code belong to; "
        "unset: workers do not sync them",
    )

    # -- metrics -----------------------------------------------------------------------------
    api_metrics: bool = _in(
        METRICS, True, description="the API answers GET /metrics (unauthenticated, like /healthz)"
    )
    metrics_cache_seconds: float = _in(
        METRICS, 5.0, ge=0, description="the API reads runs per status from SQL at most this often"
    )
    worker_metrics_port: int | None = _in(
        METRICS, None, ge=0, le=65535, description="a worker serves its pool's metrics on this port"
    )
    scheduler_metrics_port: int | None = _in(
        METRICS, None, ge=0, le=65535, description="a scheduler serves its metrics on this port"
    )
    metrics_host: str = _in(METRICS, "127.0.0.1", description="address the metrics ports bind")
    worker_metrics_dir: Path | None = _in(
        METRICS,
        None,
        description="where a worker's pool processes keep their values (emptied at each "
        "start); unset: PROMETHEUS_MULTIPROC_DIR, else a folder in the temporary directory",
    )

    # -- retention and limits ------------------------------------------------------------------
    retention_days: float | None = _in(
        RETENTION,
        None,
        ge=0,
        description="runs that ended longer ago are deleted with their events, nodes "
        "and Redis keys; unset: kept for good",
    )
    retention_batch_size: int = _in(
        RETENTION, 500, ge=1, le=10_000, description="runs one pruning transaction deletes"
    )
    max_output_bytes: int = _in(
        RETENTION,
        1_048_576,
        ge=16,
        description='largest output of a run, as JSON ("output_too_large")',
    )
    max_log_bytes: int = _in(
        RETENTION,
        1_048_576,
        ge=64,
        description="logs a run keeps; past it they are cut with a marker",
    )

    # -- logs and Flower -------------------------------------------------------------------------
    log_level: str = _in(LOGS, "INFO", description="level of every process's log")
    logging_config: Path | None = _in(
        LOGS, None, description="a logging.config dictionary as JSON; replaces the log format"
    )
    log_format: Literal["text", "json"] = _in(
        LOGS, "text", description="json: one JSON object per line, a run's lines carrying its ids"
    )
    flower_basic_auth: SecretStr | None = _in(
        LOGS, None, description='Flower\'s login as "user:password" (several: comma-separated)'
    )

    @model_validator(mode="after")
    def _page_sizes_agree(self) -> Settings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        if self.redis_cluster and self.broker_url is None:
            raise ValueError("redis_cluster needs broker_url: the broker cannot be a cluster")
        longest_run = self.max_timeout_seconds + 2 * self.cancel_grace_seconds
        if self.redis_broker and self.broker_visibility_timeout_seconds <= longest_run:
            raise ValueError(
                "broker_visibility_timeout_seconds must exceed max_timeout_seconds plus twice "
                "cancel_grace_seconds, or a long run would be delivered to a second worker"
            )
        return self

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def redis_broker(self) -> bool:
        """Whether Celery's broker is Redis (else RabbitMQ, ``amqp://``)."""
        return self.effective_broker_url.startswith(("redis://", "rediss://", "unix://"))

    @cached_property
    def route_table(self) -> list[tuple[str, str]]:
        """Routing patterns in match order: the routing file's first, then ``routes``."""
        table: list[tuple[str, str]] = []
        if self.routing_file is not None:
            with self.routing_file.open("rb") as handle:
                loaded = tomllib.load(handle)
            table.extend((str(k), str(v)) for k, v in loaded.get("routes", {}).items())
        table.extend(self.routes.items())
        return table
