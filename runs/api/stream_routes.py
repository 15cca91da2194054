"""``GET /runs/{run_id}/stream``: a run's events as Server-Sent Events.

Frames are ``id: <event_id>``, ``event: <event_type>`` and ``data: <the RunEvent JSON, as
/events returns it>``. The stream starts after ``Last-Event-ID``, else after
``after_event_id``, else at the first event; it replays what is there and goes on live, without
a gap or a duplicate, and closes after the terminal event. A comment line comes every
``RUNS_SSE_HEARTBEAT_SECONDS`` while nothing happens. Live events come from the run's shared
reader (``runs.streams.feeds``: one blocking read of its Redis stream on the event loop for all
its followers in this process, no thread); a finished run replays from SQL.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from runs.api.deps import Services
from runs.api.openapi import problems
from runs.api.params import AUTHENTICATED, ProjectDep, ServicesDep
from runs.api.routes import RunIdPath
from runs.domain.errors import InvalidRequest
from runs.domain.events import MAX_EVENT_ID, RUN_ERROR, RUN_FINISHED, RunEvent
from runs.domain.projects import Project
from runs.domain.runs import Run
from runs.schemas.runs import RunEventOut
from runs.streams.feeds import Frame

router = APIRouter(tags=["runs"])

TERMINAL_EVENTS = frozenset({RUN_FINISHED, RUN_ERROR})
# One frame of the stream; ``data`` is a RunEvent as /events returns it, as JSON text.
EVENT_FRAME = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the event id"},
        "event": {"type": "string", "description": "the event type"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["id", "event", "data"],
}
REPLAY_PAGE = 500


@router.get(
    "/runs/{run_id}/stream",
    responses={
        **problems(400, 404, *AUTHENTICATED),
        200: {
            "description": "events as they are appended, until the terminal one",
            "content": {"text/event-stream": {"schema": EVENT_FRAME}},
        },
    },
    response_class=StreamingResponse,
)
async def stream_events(
    run_id: RunIdPath,
    project: ProjectDep,
    svc: ServicesDep,
    after_event_id: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="exclusive; Last-Event-ID wins")
    ] = 0,
    last_event_id: Annotated[
        str | None,
        Header(
            max_length=20,
            description="resume after this event id (an integer; empty: not given)",
            json_schema_extra={"pattern": LAST_EVENT_ID.pattern},
        ),
    ] = None,
) -> StreamingResponse:
    after = _resume_point(last_event_id, after_event_id)
    run = await svc.blocking(svc.runs.get, project, run_id)
    return StreamingResponse(
        _frames(svc, project, run, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# What Last-Event-ID may hold: an event id of at most 15 digits (below MAX_EVENT_ID), or
# nothing (the header absent).
LAST_EVENT_ID = re.compile(r"^([0-9]{1,15})?$")


def _resume_point(last_event_id: str | None, after_event_id: int) -> int:
    value = (last_event_id or "").strip()
    if not value:
        return after_event_id
    if not LAST_EVENT_ID.fullmatch(value):
        raise InvalidRequest(
            f"Last-Event-ID must be an event id (a whole number of at most 15 digits), "
            f"not {value!r}",
            field="Last-Event-ID",
        )
    return int(value)


def frame(event: RunEvent) -> bytes:
    data = RunEventOut.from_event(event).model_dump_json()
    return f"id: {event.event_id}\nevent: {event.event_type}\ndata: {data}\n\n".encode()


@dataclass
class _Position:
    last: int  # the id of the last event sent
    ended: bool = False  # the terminal event was sent


async def _frames(svc: Services, project: Project, run: Run, after: int) -> AsyncIterator[bytes]:
    position = _Position(after)
    if not run.status.is_terminal:
        async for data in _live(svc, project, run, position):
            yield data
        if position.ended:
            return
    while True:  # a finished run's events (or the rest of them), from SQL
        page = await svc.blocking(
            svc.runs.events, project, run.run_id, after=position.last, limit=REPLAY_PAGE
        )
        for event in page.items:
            yield frame(event)
            position.last = event.event_id
        if page.next is None:
            return


def _sent(position: _Position, event: RunEvent) -> None:
    position.last = event.event_id
    position.ended = event.event_type in TERMINAL_EVENTS


async def _live(
    svc: Services, project: Project, run: Run, position: _Position
) -> AsyncIterator[bytes]:
    """Frames as the run's events come, until the terminal one; or until a heartbeat finds the
    run ended where its stream cannot show it (its keys expired, or Redis restarted empty)."""
    heartbeat = svc.settings.sse_heartbeat_seconds
    while True:  # subscribe, and again after falling too far behind the shared reader
        async with svc.feeds.subscribe(run.ref) as feed:
            while True:  # what the stream holds already, read by this follower
                events = await svc.follower.since(run.ref, position.last, limit=REPLAY_PAGE)
                for event in events:
                    yield frame(event)
                    _sent(position, event)
                    if position.ended:
                        return
                if len(events) < REPLAY_PAGE:
                    break
            while not feed.lagged:  # then the frames of the run's shared reader
                got = await _next_frame(feed.queue, heartbeat)
                if got is None:  # nothing for a heartbeat's time
                    if feed.lagged:
                        break
                    yield b": heartbeat\n\n"
                    current = await svc.blocking(svc.runs.get, project, run.run_id)
                    if current.status.is_terminal:
                        return
                    continue
                event, data = got
                if event.event_id <= position.last:
                    continue  # this follower read it from the stream already
                yield data
                _sent(position, event)
                if position.ended:
                    return


async def _next_frame(queue: asyncio.Queue[Frame], seconds: float) -> Frame | None:
    """The next shared frame, or None after ``seconds`` without one (a frame already waiting
    is taken without arming a timer)."""
    if not queue.empty():
        return queue.get_nowait()
    try:
        return await asyncio.wait_for(queue.get(), seconds)
    except TimeoutError:
        return None
