"""The web view at ``/ui``: one static page and its script, served without a token.

Every datum on it comes from the API itself: the browser calls the routes with the token
signed in (kept in the tab's sessionStorage, never in a URL), so the project walls are the
API's own. The pages are the runs list, a run (record, attempts, workflow nodes, live events,
cancel, approve, signal), the definitions and the schedules; the script picks the page from
the path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request, Response

from runs.domain.errors import NotFound

UI_DIR = Path(__file__).with_name("ui")

# The script and the styles come from this origin only, nothing runs inline, and the page
# talks to this API only: what a run holds is shown as text and cannot become code.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def asset(name: str) -> Asset:
    """A file of the web view, read once per process."""
    body = (UI_DIR / name).read_bytes()
    return Asset(body, MEDIA_TYPES[name], '"' + hashlib.sha256(body).hexdigest()[:16] + '"')


def _answer(request: Request, found: Asset) -> Response:
    headers = {**HEADERS, "ETag": found.etag}
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.get("/ui")
@router.get("/ui/definitions")
@router.get("/ui/schedules")
@router.get("/ui/runs/{run_id}")
async def page(request: Request) -> Response:
    """The one page of every view; which run (and whether it exists) is the API's to say."""
    return _answer(request, asset("index.html"))


@router.get("/ui/static/{name}")
async def static(name: str, request: Request) -> Response:
    if name not in MEDIA_TYPES or name == "index.html":
        raise NotFound(f"no file {name!r} in the web view")
    return _answer(request, asset(name))
