"""Serving the API: uvicorn with the limits a server facing hostile clients needs.

uvicorn's own options give the keep-alive timeout. The rest comes from a subclass of its
httptools protocol, passed through uvicorn's ``http=`` hook:

- a cap on one header line and on the whole request head (431), and on the URL (414), counted
  as bytes arrive, before anything is buffered;
- a deadline for the request head (408), also for a connection that sends nothing;
- an idle timeout and a deadline while a body is due (408);
- a cap on concurrent connections (503);
- every answer of the protocol itself (these, and malformed HTTP) as application/problem+json;
- a lingering close: when an answer goes out while the request body is still arriving (a 413,
  a 500, a 408), the connection is half-closed and the rest of the body is read and dropped, up
  to a bound, so that a client that sends its whole body before reading (urllib) reads the
  answer instead of a reset.

Why a subclass, and not stock options or an ASGI middleware: uvicorn's options cover the
keep-alive and, as ``--limit-concurrency``, a connection cap answered in plain text; the head's
size is bounded only by the h11 protocol (``--h11-max-incomplete-event-size``, one bound for
line and head, answered by closing). Everything about the request head (line, head and URL
caps, the head's deadline against a client that trickles it) happens before the application is
called, so a middleware never sees it; a middleware could time the body, but not answer a
408 while the client still sends. Hence the protocol subclass. It uses uvicorn's protocol
internals: ``pyproject.toml`` pins uvicorn's minor version, and
``tests/api/test_http_limits.py`` checks each limit against a real server.

Several processes (``runs api --workers N``): uvicorn binds the port in the parent and starts N
processes (multiprocessing's spawn), each with its own app built by
``runs.api.app:create_app_from_env`` (its own pools, caches and intake); the parent restarts one
that dies and, on SIGTERM or SIGINT, stops them all, each with its graceful shutdown. uvicorn
pickles its Config to each process, so the protocol is handed over as something pickle can
carry: ``functools.partial(LimitedHttpProtocol, limits=...)``, the class by reference and the
limits (read from the settings once, in the parent) by value. The processes count their metrics
in files of one directory that the parent makes (see ``runs.api.metrics.shared_metrics_dir``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from runs.api.errors import PROBLEM_JSON, problem_document
from runs.api.metrics import shared_metrics_dir
from runs.observability.logs import configure_logging
from runs.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_line_bytes: int
    max_header_bytes: int
    max_url_bytes: int
    header_timeout_seconds: float
    body_idle_timeout_seconds: float
    body_timeout_seconds: float
    max_connections: int
    linger_seconds: float
    linger_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_line_bytes=settings.http_max_header_line_bytes,
            max_header_bytes=settings.http_max_header_bytes,
            max_url_bytes=settings.http_max_url_bytes,
            header_timeout_seconds=settings.http_header_timeout_seconds,
            body_idle_timeout_seconds=settings.http_body_idle_timeout_seconds,
            body_timeout_seconds=settings.http_body_timeout_seconds,
            max_connections=settings.http_max_connections,
            linger_seconds=settings.http_linger_seconds,
            linger_bytes=settings.http_linger_bytes,
        )


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Serve the API from ``workers`` processes on one port until SIGTERM or SIGINT."""
    factory = "runs.api.app:create_app_from_env" if workers == 1 else f"{__name__}:process_app"
    with shared_metrics_dir(enabled=workers > 1 and settings.api_metrics):
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # uvicorn builds each connection's protocol by calling this, as it calls a class.
            http=protocol_factory(HttpLimits.from_settings(settings)),  # type: ignore[arg-type]
            timeout_keep_alive=settings.http_keep_alive_seconds,
            # Event streams of live runs never finish by themselves: on SIGTERM, requests get
            # this long to finish, then the rest are cut (a follower resumes with Last-Event-ID).
            timeout_graceful_shutdown=settings.http_shutdown_grace_seconds,
            log_config=None,
            access_log=False,
        )


def process_app() -> FastAPI:
    """uvicorn's factory in each process of ``runs api --workers N``: a spawned process starts
    with nothing configured, so its logging first, then ``create_app_from_env``."""
    from runs.api.app import create_app_from_env

    configure_logging(Settings())
    return create_app_from_env()


def protocol_factory(limits: HttpLimits) -> Callable[..., LimitedHttpProtocol]:
    """What uvicorn calls to make a connection's protocol: the limits travel as an argument,
    so the factory pickles (uvicorn pickles it to each process of ``--workers``)."""
    return functools.partial(LimitedHttpProtocol, limits=limits)


class _RequestRefused(Exception):
    """Raised inside a parser callback: the parser stops, and the stored problem answers."""


class _LingeringTransport:
    """The transport as a request's response cycle sees it: closing it while the request
    body is still arriving becomes a lingering close."""

    def __init__(self, protocol: LimitedHttpProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport

    def close(self) -> None:
        if self._protocol.body_pending:
            self._protocol.linger()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        self.limits = limits
        super().__init__(*args, **kwargs)
        self.body_pending = False
        self._reading_head = True
        self._head_bytes = 0
        self._heads_done = 0
        self._lingering = False
        self._discarded = 0
        self._refusal = (400, "the request is not valid HTTP/1.1")
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # -- connections -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning("connection refused: %d connections open", len(self.connections) - 1)
            self._answer(503, "the server has too many open connections; try again shortly")
            return
        self._start("head", self.limits.header_timeout_seconds, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        if self._lingering:
            self.transport.close()

    # -- bytes in --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._discarded += len(data)
            if self._discarded > self.limits.linger_bytes:
                self.transport.close()
            return
        if self._reading_head:
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) > room:
                heads_before = self._heads_done
                self._head_bytes += room
                super().data_received(data[:room])
                if self._lingering or self.transport.is_closing():
                    return
                if self._heads_done == heads_before:  # the head did not end within the cap
                    self._refuse(
                        431,
                        f"the request head exceeds {self.limits.max_header_bytes} bytes; "
                        "send fewer or shorter headers",
                    )
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        super().data_received(data)

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if "head" not in self._timers:
            self._start("head", self.limits.header_timeout_seconds, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._refusal = (414, f"the URL exceeds {self.limits.max_url_bytes} bytes")
            raise _RequestRefused

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) + 2 > self.limits.max_header_line_bytes:
            self._refusal = (
                431,
                f"a header line exceeds {self.limits.max_header_line_bytes} bytes",
            )
            raise _RequestRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._heads_done += 1
        self._stop("head")
        super().on_headers_complete()
        if self.cycle is not None and not isinstance(self.cycle.transport, _LingeringTransport):
            self.cycle.transport = _LingeringTransport(self, self.transport)  # type: ignore[assignment]
        self.body_pending = True  # until on_message_complete, called at once for no body
        self._start("body_idle", self.limits.body_idle_timeout_seconds, self._body_idle)
        self._start("body", self.limits.body_timeout_seconds, self._body_late)

    def on_body(self, body: bytes) -> None:
        self._start("body_idle", self.limits.body_idle_timeout_seconds, self._body_idle)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.body_pending = False
        self._reading_head = True  # whatever comes next is the head of the next request
        self._head_bytes = 0
        self._stop("body_idle")
        self._stop("body")
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser refused, as a problem."""
        status, detail = self._refusal
        self._refuse(status, detail)

    # -- timeouts --------------------------------------------------------------------------

    def _head_too_slow(self) -> None:
        self._timers.pop("head", None)
        seconds = self.limits.header_timeout_seconds
        self._refuse(408, f"the request head did not arrive within {seconds:g} s")

    def _body_idle(self) -> None:
        self._timers.pop("body_idle", None)
        if self.flow.read_paused:
            # uvicorn stopped reading because the app has not consumed the body yet: not the
            # client's fault (the overall deadline still applies).
            self._start("body_idle", self.limits.body_idle_timeout_seconds, self._body_idle)
            return
        seconds = self.limits.body_idle_timeout_seconds
        self._refuse(408, f"the request body paused for {seconds:g} s; send it without pauses")

    def _body_late(self) -> None:
        self._timers.pop("body", None)
        seconds = self.limits.body_timeout_seconds
        self._refuse(408, f"the request body did not arrive within {seconds:g} s")

    def _start(self, name: str, seconds: float, callback: Any) -> None:
        self._stop(name)
        self._timers[name] = self.loop.call_later(seconds, callback)

    def _stop(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    # -- answers ---------------------------------------------------------------------------

    def _refuse(self, status: int, detail: str) -> None:
        if self.transport.is_closing() or self._lingering:
            return
        log.info("HTTP %d from the protocol: %s", status, detail)
        answered = self.cycle is not None and not self.cycle.response_complete
        if answered and self.cycle.response_started:
            self.transport.close()  # an answer is half written: nothing more can be said
            return
        self._answer(status, detail)

    def _answer(self, status: int, detail: str) -> None:
        """Write a problem and close, lingering; the app of this connection is told the
        client went away."""
        title = STATUS_LINE[status].decode("ascii").split(" ", 2)[2].strip()
        body = json.dumps(problem_document(status, title, detail)).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        )
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(b"".join(head) + body)
        self.linger()

    def linger(self) -> None:
        """Half-close after what was written, then read and drop what the client still sends,
        up to ``linger_seconds`` and ``linger_bytes``, before closing."""
        if self._lingering:
            return
        self._lingering = True
        for name in list(self._timers):
            self._stop(name)
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        try:
            self.transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            self.transport.close()
            return
        self._timers["linger"] = self.loop.call_later(
            self.limits.linger_seconds, self.transport.close
        )
