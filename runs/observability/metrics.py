"""The Prometheus metrics every process of runs records, and the calls that record them.

Recording is an in-process increment (in a worker, a write to the multiprocess file of its
pool process): no I/O per run. Labels are bounded sets only: target (registered
definitions), kind, status, queue, HTTP method, route template; never a run id.

The metrics live in prometheus-client's default registry. A process whose values several
processes share (a prefork worker pool) must have ``PROMETHEUS_MULTIPROC_DIR`` set before
this module is imported (``runs worker --metrics-port`` does so, see ``runs.observability.metrics_server``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

# No "<name>_created" series beside every counter and histogram: twice the series for a
# timestamp that Prometheus's own reset handling makes unnecessary.
disable_created_metrics()  # type: ignore[no-untyped-call]

M = TypeVar("M", bound=MetricWrapperBase)

# Seconds: from a few milliseconds (a no-op task) to hours (RUNS_MAX_TIMEOUT_SECONDS).
RUN_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Seconds a run waited for a worker: around a millisecond when workers keep up.
WAIT_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
HTTP_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RUNS_CREATED = Counter(
    "runs_created", "Runs accepted (API, schedules, child runs).", ["target", "kind"]
)
RUNS_FINISHED = Counter(
    "runs_finished", "Runs that reached a terminal status.", ["target", "kind", "status"]
)
RUN_DURATION = Histogram(
    "runs_run_duration_seconds",
    "From a run's start to its terminal status (runs that started).",
    ["target"],
    buckets=RUN_SECONDS,
)
QUEUE_WAIT = Histogram(
    "runs_queue_wait_seconds",
    "From a run's creation to its first attempt's start.",
    ["target"],
    buckets=WAIT_SECONDS,
)
ATTEMPTS_RETRIED = Counter(
    "runs_attempts_retried",
    "Failed attempts followed by another (a retry, or a reclaimed lease with attempts left).",
    ["target"],
)
LEASES_RECLAIMED = Counter(
    "runs_leases_reclaimed",
    "Runs taken back from a worker that stopped renewing its lease (the sweeper).",
    ["target"],
)
JOBS_REDISPATCHED = Counter(
    "runs_jobs_redispatched",
    "Jobs the sweeper sent again: of runs left pending (kind=run), of workflow steps (step).",
    ["kind"],
)
EVENTS_APPENDED = Counter("runs_events_appended", "Events added to runs' event streams.")
HTTP_REQUESTS = Counter(
    "runs_http_requests",
    "HTTP requests answered, by route template (unmatched: no route) and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "runs_http_request_duration_seconds",
    "From a request's arrival to its response head (an event stream: until it opens).",
    ["method", "route"],
    buckets=HTTP_SECONDS,
)


_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def _child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, kept: a label set is looked up once per process (the
    label sets are bounded), and recording is then the increment alone."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def run_created(target: str, kind: str) -> None:
    _child(RUNS_CREATED, target, kind).inc()


def run_started(target: str, created_at: datetime, started_at: datetime | None) -> None:
    """A run's first attempt started: how long it waited."""
    if started_at is not None:
        waited = (started_at - created_at).total_seconds()
        _child(QUEUE_WAIT, target).observe(max(waited, 0.0))


def run_finished(target: str, kind: str, status: str, duration_ms: int | None) -> None:
    _child(RUNS_FINISHED, target, kind, status).inc()
    if duration_ms is not None:
        _child(RUN_DURATION, target).observe(duration_ms / 1000)


def attempt_retried(target: str) -> None:
    _child(ATTEMPTS_RETRIED, target).inc()


def lease_reclaimed(target: str) -> None:
    _child(LEASES_RECLAIMED, target).inc()


def jobs_redispatched(kind: str, count: int) -> None:
    if count:
        _child(JOBS_REDISPATCHED, kind).inc(count)


def events_appended(count: int) -> None:
    if count:
        EVENTS_APPENDED.inc(count)


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    _child(HTTP_REQUESTS, method, route, str(status)).inc()
    _child(HTTP_LATENCY, method, route).observe(seconds)
