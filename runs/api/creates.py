"""The hot path of ``POST /runs``: creates that arrive together are accepted together, and a
lane that answers a well-formed create without the framework in its way.

``CreateIntake`` (group commit): a create that finds no batch in flight starts one at once,
alone; the creates that arrive while a batch is committed and sent wait, and go together as
the next one: one thread hop, one INSERT and one commit for all of them
(``RunService.create_many``). Nothing waits on purpose, so a lone create is as fast as
before, and under load the batches grow by themselves. Each create still gets its own answer:
its run, or its own error.

``CreateFastLane``: the route ``runs.api.routes.create_run`` stays the documented one and
answers whatever the lane leaves to it. The lane takes a create whose body is JSON that
``CreateRunIn`` accepts from its bytes, with a token the API authenticated lately; it answers
what the route would (the same model, the same problems), pre-encoded. Anything else (no
JSON content type, a body the model refuses, a token not seen lately) goes to the route, with
the body as it came: its errors stay the route's.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runs.api.errors import domain_problem, unreachable_problem
from runs.api.responses import JSONResponse, dump_json
from runs.domain.errors import RunsError
from runs.domain.projects import Project
from runs.domain.runs import Run, RunRequest
from runs.observability.json_logs import bind_run_fields
from runs.schemas.runs import CreateRunIn, CreateRunOut, RunOut
from runs.services.transient import TRANSIENT_ERRORS

Accepted = tuple[Run, bool]
CreateMany = Callable[[Sequence[tuple[Project, RunRequest]]], list[Accepted | Exception]]
Blocking = Callable[..., Awaitable[Any]]

MAX_BATCH = 256


class CreateIntake:
    def __init__(self, create_many: CreateMany, blocking: Blocking) -> None:
        self._create_many = create_many
        self._blocking = blocking
        self._waiting: list[tuple[Project, RunRequest, asyncio.Future[Accepted]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def create(self, project: Project, request: RunRequest) -> Accepted:
        """Accept one run, with whatever else arrives meanwhile. Returns (run, duplicate)."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((project, request, future))
        if self._draining is None:
            # In a context of its own: a batch's log lines carry no one request's fields.
            self._draining = asyncio.create_task(self._drain(), context=contextvars.Context())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[Project, RunRequest, asyncio.Future[Accepted]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    results = await self._blocking(
                        self._create_many, [(project, request) for project, request, _ in batch]
                    )
                except Exception as error:  # storage away: every create of the batch fails
                    results = [error] * len(batch)
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller went away; the run stays accepted
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._draining = None
            # Only when the loop itself was cancelled (shutdown): none of these is answered.
            for _, _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting = []


class _Access(Protocol):
    def cached(self, secret: str | None) -> Project | None: ...


class _CreateServices(Protocol):
    access: _Access
    intake: CreateIntake


class CreateFastLane:
    """ASGI middleware, inside the body limit (whose buffered body it reads again)."""

    def __init__(self, app: ASGIApp, route: BaseRoute) -> None:
        self.app = app
        self._route = route  # the documented route: its requests are counted under it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/runs" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        taken = self._take(scope, received)
        if taken is None:
            replay = iter(received)

            async def replaying_receive() -> Message:
                return next(replay, None) or await receive()

            await self.app(scope, replaying_receive, send)
            return
        services, project, body = taken
        scope["route"] = self._route
        bind_run_fields(project_id=project.id)
        response = await _created(services, project, body, scope["path"])
        await response(scope, receive, send)

    def _take(
        self, scope: Scope, received: list[Message]
    ) -> tuple[_CreateServices, Project, CreateRunIn] | None:
        """What the lane needs to answer: else None, and the route answers."""
        if received[-1]["type"] != "http.request":
            return None  # the client went away
        content_type = secret = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"authorization":
                scheme, _, secret = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    return None
        if content_type is None or content_type.split(b";")[0].strip() != b"application/json":
            return None
        services: _CreateServices = scope["app"].state.services
        project = services.access.cached(secret.strip() if secret else None)
        if project is None:
            return None
        raw = b"".join(message.get("body", b"") for message in received)
        try:
            return services, project, CreateRunIn.model_validate_json(raw)
        except ValidationError:
            return None


async def _created(
    services: _CreateServices, project: Project, body: CreateRunIn, path: str
) -> JSONResponse:
    try:
        run, duplicate = await services.intake.create(project, body.to_request())
    except RunsError as exc:
        return domain_problem(exc, path)
    except TRANSIENT_ERRORS as exc:
        return unreachable_problem("POST", path, exc)
    answer = CreateRunOut(accepted=True, duplicate=duplicate, run=RunOut.from_run(run))
    return _Encoded(dump_json(answer.model_dump(mode="json")), status_code=202)


class _Encoded(JSONResponse):
    """A JSON response whose body is encoded already."""

    def render(self, content: Any) -> bytes:
        assert isinstance(content, bytes)
        return content
