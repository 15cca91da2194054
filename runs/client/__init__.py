"""The Python SDK of the Runs API: ``RunsClient`` (sync) and ``AsyncRunsClient`` over httpx.

    from runs.client import create_runs_client

    with create_runs_client() as client:  # RUNS_API_URL, RUNS_API_TOKEN, RUNS_PROJECT
        created = client.create_task_run("task:echo", config={"hello": "world"})
        run = client.wait(created.run.run_id, timeout=60)

Answers are the pydantic models of ``runs.schemas.runs``, the ones the server sends.
"""

from runs.client.aio import AsyncRunsClient, create_async_runs_client
from runs.client.calls import RunFilters, TaskRunOptions, WorkflowRunOptions
from runs.client.errors import (
    ApiError,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    RunsClientError,
    ServerError,
    TransportError,
    Unauthorized,
    WaitTimeout,
)
from runs.client.retry import RetryPolicy
from runs.client.sync import RunsClient, create_runs_client

__all__ = [
    "ApiError",
    "AsyncRunsClient",
    "ConfigurationError",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "RateLimited",
    "RetryPolicy",
    "RunFilters",
    "RunsClient",
    "RunsClientError",
    "ServerError",
    "TaskRunOptions",
    "TransportError",
    "Unauthorized",
    "WaitTimeout",
    "WorkflowRunOptions",
    "create_async_runs_client",
    "create_runs_client",
]
