"""The one table mapping domain errors to HTTP, and ``application/problem+json`` bodies."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runs.api.responses import JSONResponse
from runs.domain import errors
from runs.services.transient import TRANSIENT_ERRORS

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# What a 503 for unreachable storage asks a client to wait before it tries again.
RETRY_AFTER_SECONDS = 1

STATUS_BY_ERROR: dict[type[errors.RunsError], int] = {
    errors.InvalidRequest: 400,
    errors.Unauthenticated: 401,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnknownTarget: 422,
    errors.Unsupported: 422,
}


def problem_document(
    status: int, title: str, detail: str, *, instance: str | None = None
) -> dict[str, Any]:
    """The body of every error answer (also of those the HTTP server writes itself)."""
    slug = title.lower().replace(" ", "-")
    body: dict[str, Any] = {
        "type": f"urn:runs:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    return body


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = problem_document(status, title, detail, instance=instance)
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] in ("query", "path", "header"):
        return str(loc[1])  # a parameter, not an index into its repeated values
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_detail(
    exc: RequestValidationError, content_type: str
) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return f"the body is not valid JSON: {ctx.get('error', 'parse error')}", []
        loc = tuple(err.get("loc", ()))
        if loc == ("body",) and not _is_json(content_type):
            sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
            return (
                f"send the body as JSON with the header Content-Type: application/json "
                f"(this request has {sent})",
                [],
            )
        field = _field_of(loc)
        message = err.get("msg", "invalid")
        if err.get("type") == "missing":
            message = "is required"
        elif err.get("type") == "string_pattern_mismatch":
            message = _pattern_message((err.get("ctx") or {}).get("pattern", "")) or message
        problems.append({"field": field, "message": message})
    detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems) or "invalid request"
    return detail, problems


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


# A filter of named values: "^(?:a|b)(?:,(?:a|b))*$" (runs.api.params.listing).
_CHOICES = re.compile(r"^\^\(\?:([A-Za-z_|]+)\)\(\?:,")


def _pattern_message(pattern: str) -> str | None:
    """What a pattern of named values allows, said in words."""
    found = _CHOICES.match(pattern)
    if found is None:
        return None
    choices = ", ".join(found.group(1).split("|"))
    return f"must be one of {choices} (several: comma-separated, or the parameter repeated)"


def _unreadable_body(cause: BaseException | None) -> str | None:
    """Why the JSON parser could not read a body, when the framework only says it failed."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (at byte {cause.start}); send UTF-8 JSON"
    if isinstance(cause, RecursionError):
        return "the body nests arrays or objects too deeply to be read; flatten it"
    if isinstance(cause, ValueError):  # an integer literal past Python's digit limit
        return f"the body could not be read as JSON: {cause}"
    return None


def domain_problem(exc: errors.RunsError, path: str) -> JSONResponse:
    """The answer to a request the domain refused."""
    status = STATUS_BY_ERROR.get(type(exc), 400)
    return problem(status, exc.title, exc.detail, instance=path, field=exc.field)


def unreachable_problem(method: str, path: str, exc: Exception) -> JSONResponse:
    """The answer while the database or Redis is down or restarting: a create was not
    committed (nothing was half-written; its job is sent only after the commit). Clients
    retry a 503."""
    log.warning("storage unreachable on %s %s: %s", method, path, exc)
    return problem(
        503,
        "Service unavailable",
        "the server cannot reach its database or Redis right now; try again in a moment",
        instance=path,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.RunsError)
    async def on_domain_error(request: Request, exc: errors.RunsError) -> JSONResponse:
        return domain_problem(exc, request.url.path)

    async def on_storage_unreachable(request: Request, exc: Exception) -> JSONResponse:
        return unreachable_problem(request.method, request.url.path, exc)

    for transient in TRANSIENT_ERRORS:
        app.add_exception_handler(transient, on_storage_unreachable)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, problems = _validation_detail(exc, request.headers.get("content-type", ""))
        return problem(
            400, "Invalid request", detail, instance=request.url.path, errors=problems or None
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
        title = titles.get(exc.status_code, "Request failed")
        unreadable = _unreadable_body(exc.__cause__)
        if unreadable is not None:
            return problem(400, "Invalid request", unreadable, instance=request.url.path)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(
            exc.status_code, title, str(exc.detail), instance=request.url.path, headers=headers
        )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (the router names only the first route
    whose path matched, and a path may have several, one per method)."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in _flat(request.app.router.routes):
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(path):
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _flat(routes: Iterable[Any]) -> Iterator[Any]:
    """Routes, with those of included routers in their place."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


class UnexpectedErrors:
    """Turns an unhandled exception into a 500 problem+json carrying a request id, logs its
    traceback once under that id, and closes the connection (``Connection: close``), so that
    a client's next request never lands on a connection the server is dropping.

    Outermost of the app's middleware: the framework's own last-resort handler would send the
    response and then re-raise, so the server logs the error again and resets the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            log.info("the client of %s %s went away", scope.get("method"), scope.get("path"))
        except Exception:
            if started:  # too late for an answer: the server logs it and drops the connection
                raise
            request_id = uuid.uuid4().hex
            log.exception(
                "unhandled error on %s %s (request_id=%s)",
                scope.get("method"),
                scope.get("path"),
                request_id,
                extra={
                    "request_id": request_id,
                    "run_id": (scope.get("path_params") or {}).get("run_id"),
                },
            )
            response = problem(
                500,
                "Internal error",
                f"the server failed to handle this request; quote request id {request_id}",
                instance=scope.get("path"),
                headers={"Connection": "close", "X-Request-ID": request_id},
                request_id=request_id,
            )
            await response(scope, receive, send)
