"""One Settings object, read from ``RUNS_*`` environment variables (and an optional .env file).

Build it at an entry point (CLI command, Celery app, test fixture) and pass it down; nothing
reads the environment at import time.
"""

from __future__ import annotations

import tomllib
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RUNS_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_by_name=True,  # fields with an older variable name too (their alias)
    )

    # Storage and messaging
    database_url: str = "sqlite:///.runs/runs.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None  # defaults to redis_url
    # Connections each pool keeps; the API also runs at most this many blocking calls at once,
    # so that a burst waits for a pooled connection instead of opening and closing new ones.
    database_pool_size: int = Field(default=5, ge=1)

    # Definitions: modules whose import registers tasks and workflows
    definitions: list[str] = Field(default_factory=lambda: ["workers.examples"])

    # Routing: target -> queue. Patterns are fnmatch globs; the first match wins.
    default_queue: str = "runs"
    routes: dict[str, str] = Field(default_factory=dict)
    routing_file: Path | None = None

    # HTTP API
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_input_bytes: int = Field(default=262_144, ge=16)
    default_page_size: int = Field(default=20, ge=1, le=100)
    max_page_size: int = Field(default=100, ge=1, le=1000)
    auth_cache_seconds: float = Field(default=5.0, ge=0)
    target_cache_seconds: float = Field(default=5.0, ge=0)

    # The HTTP server of `runs api`, per process. Past a limit the answer is a problem:
    # 431 (a header line, or the whole head), 414 (the URL), 408 (too slow), 503 (too many
    # connections).
    http_max_header_line_bytes: int = Field(default=8192, ge=256)
    http_max_header_bytes: int = Field(default=32_768, ge=1024)
    http_max_url_bytes: int = Field(default=16_384, ge=256, le=65_535)
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    http_body_idle_timeout_seconds: float = Field(default=10.0, gt=0)
    http_body_timeout_seconds: float = Field(default=60.0, gt=0)
    http_keep_alive_seconds: int = Field(default=5, ge=1)
    # On SIGTERM, in-flight requests get this long to finish; event streams are then cut.
    http_shutdown_grace_seconds: int = Field(default=10, ge=0)
    http_max_connections: int = Field(default=1000, ge=1)
    # After answering before a request body was read (a 413, say): read and drop the rest of
    # the body this long, and at most this much, so that the client can read the answer.
    http_linger_seconds: float = Field(default=2.0, ge=0)
    http_linger_bytes: int = Field(default=16_777_216, ge=0)

    # Events
    # How long a finished run's Redis stream (and its meta key) is kept; its events stay in
    # SQL. RUNS_EVENT_STREAM_TTL_SECONDS is the older name, still read.
    stream_ttl_seconds: int = Field(
        default=86_400,
        ge=60,
        validation_alias=AliasChoices("RUNS_STREAM_TTL_SECONDS", "RUNS_EVENT_STREAM_TTL_SECONDS"),
    )
    # GET /runs/{run_id}/stream sends a comment line this often while no event comes.
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)

    # Workers
    # A Redis broker re-delivers an unacknowledged message after this; it must exceed the
    # longest run (max_timeout_seconds plus the stop grace), which the validator checks.
    # RabbitMQ (``amqp://``) has no such timeout: it re-delivers only when the consumer's
    # connection is lost, and the check does not apply.
    broker_visibility_timeout_seconds: int = Field(default=43_200, ge=1)
    worker_lease_seconds: float = Field(default=60.0, gt=0)
    # SIGTERM: a worker takes no more jobs and lets running attempts end for this long; then
    # it stops them and hands their runs back to pending (workers/drain.py).
    worker_drain_seconds: float = Field(default=30.0, ge=0)
    worker_heartbeat_seconds: float = Field(default=0.25, gt=0)
    # Task events (what Flower shows) wait up to this long to be sent together.
    worker_event_flush_seconds: float = Field(default=0.1, ge=0)
    # Runs still pending after this long get their job sent again (each worker sweeps).
    pending_redispatch_seconds: float = Field(default=30.0, gt=0)
    sweep_interval_seconds: float = Field(default=10.0, gt=0)

    # Retries, timeouts and stops of task runs
    # Retries when neither the run nor its definition sets backoff_limit (0 = no retry).
    default_backoff_limit: int = Field(default=0, ge=0, le=100)
    # Delay before attempt n+1: min(base * 2^(n-1), max), then jittered down by up to half.
    retry_backoff_seconds: float = Field(default=1.0, ge=0)
    retry_backoff_max_seconds: float = Field(default=300.0, ge=0)
    # Every attempt has a timeout: the run's, else its definition's, capped at this.
    max_timeout_seconds: int = Field(default=21_600, ge=1)
    # A run that waited longer than this for a worker fails with error.code "expired".
    queue_ttl_seconds: float | None = Field(default=None, gt=0)
    # After a cancel, timeout or lost lease: cooperative flag, then this long before the task
    # is interrupted (a subprocess gets SIGTERM at once and SIGKILL after it), and as long
    # again before the worker process itself is killed.
    cancel_grace_seconds: float = Field(default=10.0, gt=0)
    # How long a worker keeps trying to record an outcome while Redis or SQL is unreachable.
    finish_retry_seconds: float = Field(default=30.0, ge=0)

    # Schedules (``runs scheduler``)
    # The scheduler looks for due occurrences at least this often, and sooner when the next
    # one is due sooner.
    scheduler_poll_seconds: float = Field(default=1.0, gt=0)
    # An occurrence fired this late is on time; an older one was missed (the scheduler was
    # down, or the schedule paused) and its schedule's catch-up policy decides.
    scheduler_misfire_grace_seconds: float = Field(default=10.0, ge=0)
    # Schedules one scheduler fires per transaction, and occurrences one schedule catches up
    # per pass (catchup "all"; the rest follow in the next passes).
    scheduler_batch_size: int = Field(default=200, ge=1, le=10_000)
    scheduler_max_catchup_runs: int = Field(default=100, ge=1)
    # A file the scheduler touches every round, for a health check to read its age.
    scheduler_heartbeat_file: Path | None = None
    # The project that schedules written in code (``schedule(...)`` beside the tasks) belong
    # to, by id or slug; unset: workers do not sync them.
    source_schedules_project: str | None = None

    # Prometheus metrics (README, "Metrics"). The API answers GET /metrics, unauthenticated
    # like /healthz, unless this is false.
    api_metrics: bool = True
    # The API reads runs per active status from SQL at most this often (scrapes between get
    # the same numbers); queue depths are read on every scrape.
    metrics_cache_seconds: float = Field(default=5.0, ge=0)
    # A worker (its whole pool) and a scheduler serve metrics on these ports when set
    # (`runs worker --metrics-port`, `runs scheduler --metrics-port`), bound to metrics_host.
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    scheduler_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # Where a worker's pool processes keep their values (emptied at each start; one per
    # worker). Unset: PROMETHEUS_MULTIPROC_DIR, else <tmp>/runs-worker-metrics-<port>.
    worker_metrics_dir: Path | None = None

    # Retention: runs that finished more than this many days ago are deleted with their
    # events, nodes and Redis keys, by every worker's sweeper (unset: kept for good).
    retention_days: float | None = Field(default=None, ge=0)
    # Runs one pruning transaction deletes.
    retention_batch_size: int = Field(default=500, ge=1, le=10_000)

    # Limits of what a run stores
    max_output_bytes: int = Field(default=1_048_576, ge=16)
    max_log_bytes: int = Field(default=1_048_576, ge=64)
    log_level: str = "INFO"
    logging_config: Path | None = None
    # "json": one JSON object per line; a line about a run carries its run_id, project_id,
    # target, attempt and queue (runs/observability/json_logs.py). Used when RUNS_LOGGING_CONFIG is unset.
    log_format: Literal["text", "json"] = "text"

    # Flower (`runs flower`): HTTP basic auth as "user:password" (several: comma-separated).
    flower_basic_auth: SecretStr | None = None

    @model_validator(mode="after")
    def _page_sizes_agree(self) -> Settings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
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
