"""The dashboard: two static pages and their scripts, no build step.

``/`` shows the run live, ``/tasks/{id}`` one task with a timeline of its steps and the
history of its attempts (running and waiting for capacity drawn apart). Both are
fed by the API's event streams (see `legion.server.streams`). The chart library is
uPlot (MIT, vendored in ``static/`` with its licence). Like every route but the health
checks they need an API key: a browser asks for it (HTTP Basic: any user name, the key as the
password) and then sends it with each request of the page.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Depends, HTTPException, Response

from legion.server.deps import require_key

_TYPES = {
    "common.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "task.js": "text/javascript",
    "style.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "uPlot.LICENSE.txt": "text/plain",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Cache-Control": "no-store",
}

router = APIRouter(dependencies=[Depends(require_key)], include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _page(name: str) -> Response:
    return Response(_read(name), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


@router.get("/")
async def index() -> Response:
    """The run, live."""
    return _page("index.html")


@router.get("/tasks/{task_id}")
async def task_page(task_id: str) -> Response:
    """One task: the timeline of its steps and the history of its attempts (the page says
    "no such task" for an id that is not one, as for one that does not exist)."""
    return _page("task.html")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The pages' scripts and styles (a fixed list: nothing else is served)."""
    media_type = _TYPES.get(name)
    if media_type is None:
        raise HTTPException(404, "no such file")
    return Response(
        _read(name),
        media_type=f"{media_type}; charset=utf-8",
        headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"},
    )
