"""``RunsClient``: the Runs API from synchronous Python, over httpx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Unpack

import httpx

from runs.client.calls import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Call,
    Calls,
    Model,
    RunFilters,
    TaskRunOptions,
    WorkflowRunOptions,
    run_path,
)
from runs.client.config import resolve_config
from runs.client.errors import (
    ApiError,
    RunsClientError,
    TransportError,
    error_for,
    retry_after_seconds,
)
from runs.client.following import (
    Deadline,
    event_of,
    fallback_to_polling,
    read_timeout,
    reconnect_delay,
    stream_headers,
)
from runs.client.retry import RetryPolicy
from runs.client.sse import FrameReader
from runs.schemas.catalog import DefinitionListOut, NodeListOut, WhoAmIOut
from runs.schemas.runs import (
    ApprovalOut,
    CancelRunOut,
    CreateRunOut,
    RunEventListOut,
    RunEventOut,
    RunListOut,
    RunOut,
    SignalOut,
)

USER_AGENT = "runs-python"


class RunsClient:
    """A client of one project. Use it as a context manager, or call ``close()``."""

    def __init__(
        self,
        *,
        api_url: str | None = None,
        auth_token: str | None = None,
        project_reference: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        config = resolve_config(api_url, auth_token, project_reference)
        self.api_url = config.api_url
        self.retry = retry or RetryPolicy()
        self._calls = Calls(config.project_reference)
        self._http = httpx.Client(
            base_url=config.api_url,
            headers={
                "Authorization": f"Bearer {config.auth_token}",
                "User-Agent": USER_AGENT,
            },
            timeout=timeout,
            transport=transport,
        )

    @property
    def project_reference(self) -> str | None:
        return self._calls.project_reference

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RunsClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------------

    def create_task_run(self, target: str, **options: Unpack[TaskRunOptions]) -> CreateRunOut:
        """Start a task run (``task:<id>``, or just the id). Without a ``public_id`` the client
        makes one, so a retried create never starts a second run."""
        self._know_project()
        return self._send(self._calls.create_task_run(target, options))

    def create_workflow_run(
        self, workflow: str, **options: Unpack[WorkflowRunOptions]
    ) -> CreateRunOut:
        """Start a workflow run (``workflow:<id>``, or just the id)."""
        self._know_project()
        return self._send(self._calls.create_workflow_run(workflow, options))

    def get(self, run_id: str) -> RunOut:
        return self._send(self._calls.get(run_id))

    def events(self, run_id: str, *, after: int = 0, limit: int | None = None) -> RunEventListOut:
        """One page of the run's events after the event id ``after``."""
        return self._send(self._calls.events(run_id, after, limit))

    def list(self, *, cursor: str | None = None, **filters: Unpack[RunFilters]) -> RunListOut:
        """One page of the project's runs, newest first; ``page_info.next`` is the next cursor."""
        self._know_project()
        return self._send(self._calls.list(cursor, filters))

    def iter_runs(self, **filters: Unpack[RunFilters]) -> Iterator[RunOut]:
        """Every run that matches, page after page."""
        cursor: str | None = None
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page.data
            cursor = page.page_info.next
            if cursor is None:
                return

    def cancel(self, run_id: str) -> CancelRunOut:
        return self._send(self._calls.cancel(run_id))

    def approve(
        self, run_id: str, node_id: str, *, approved: bool = True, comment: str | None = None
    ) -> ApprovalOut:
        """Approve (or, with ``approved=False``, reject) a workflow's ``wait_for_approval``."""
        return self._send(self._calls.approve(run_id, node_id, approved, comment))

    def signal(self, run_id: str, event: str, payload: Any = None) -> SignalOut:
        """Deliver ``event`` to the workflow run's ``wait_for_event`` steps."""
        return self._send(self._calls.signal(run_id, event, payload))

    def definitions(self) -> DefinitionListOut:
        return self._send(self._calls.definitions())

    def nodes(self, run_id: str) -> NodeListOut:
        """A workflow run's nodes and their states, in plan order (none for a task run)."""
        return self._send(self._calls.nodes(run_id))

    def whoami(self) -> WhoAmIOut:
        """The project the token belongs to."""
        return self._send(self._calls.whoami())

    def _know_project(self) -> None:
        """Without a configured project, the token's own (asked once)."""
        if self._calls.project_reference is None:
            self._calls.project_reference = (self.whoami()).project.id

    def stream(self, run_id: str, *, after: int = 0) -> Iterator[RunEventOut]:
        """The run's events after ``after``, live, until its terminal event. A dropped
        connection is resumed with ``Last-Event-ID``: no event is missed or repeated."""
        yield from self._stream(run_id, after, deadline=None)

    def wait(
        self, run_id: str, *, timeout: float | None = None, poll_interval: float = 1.0
    ) -> RunOut:
        """The run once it has ended. Follows its stream, and polls if the stream fails.
        Raises ``WaitTimeout`` after ``timeout`` seconds."""
        deadline = Deadline.after(run_id, timeout)
        run = self.get(run_id)
        if run.status in TERMINAL_STATUSES:
            return run
        try:
            for _ in self._stream(run_id, 0, deadline):
                pass
        except RunsClientError as exc:
            if not fallback_to_polling(exc):
                raise
        run = self.get(run_id)
        while run.status not in TERMINAL_STATUSES:
            if deadline is not None:
                deadline.check()
                time.sleep(max(0.0, min(poll_interval, deadline.remaining())))
            else:
                time.sleep(poll_interval)
            run = self.get(run_id)
        return run

    # -- sending ---------------------------------------------------------------------------

    def _send(self, call: Call[Model]) -> Model:
        retry = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.body
                )
            except httpx.TransportError as exc:
                delay = self.retry.after_failure(retry, exc, call.idempotent)
                if delay is None:
                    raise TransportError(f"{call.method} {call.path}: {exc!r}") from exc
            else:
                if response.is_success:
                    return call.answer.model_validate_json(response.content)
                delay = self.retry.after_status(
                    retry,
                    response.status_code,
                    retry_after_seconds(response.headers.get("Retry-After")),
                    call.idempotent,
                )
                if delay is None:
                    raise error_for(response)
            time.sleep(delay)
            retry += 1

    def _stream(self, run_id: str, after: int, deadline: Deadline | None) -> Iterator[RunEventOut]:
        last, retry = after, 0
        while True:
            got = 0
            try:
                with self._http.stream(
                    "GET",
                    run_path(run_id, "/stream"),
                    headers=stream_headers(last),
                    timeout=httpx.Timeout(self._http.timeout.connect, read=read_timeout(deadline)),
                ) as response:
                    if not response.is_success:
                        response.read()
                        raise error_for(response)
                    reader = FrameReader()
                    for line in response.iter_lines():
                        if deadline is not None:
                            deadline.check()
                        frame = reader.feed(line)
                        if frame is None:
                            continue
                        event = event_of(frame)
                        last, got, retry = event.event_id, got + 1, 0
                        yield event
                        if event.event_type in TERMINAL_EVENTS:
                            return
            except (httpx.TransportError, ApiError) as exc:
                time.sleep(reconnect_delay(self.retry, retry, exc, deadline))
                retry += 1
                continue
            if got == 0:
                return  # closed with nothing more to send: the run has ended
            # Closed early (the server stopped, or the run's end was read from SQL): reconnect.


def create_runs_client(
    *,
    auth_token: str | None = None,
    project_reference: str | None = None,
    api_url: str | None = None,
    **options: Any,
) -> RunsClient:
    """A client as ``createRunsClient`` makes one; what is not given comes from the
    environment (``RUNS_API_URL``/``RUNS_API_TOKEN``/``RUNS_PROJECT``, or the
    ``VERYFRONT_*`` names)."""
    return RunsClient(
        api_url=api_url, auth_token=auth_token, project_reference=project_reference, **options
    )
