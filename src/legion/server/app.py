"""``create_app``: the FastAPI application of ``legion serve``.

Routes (every one but ``/healthz`` and ``/livez`` needs an API key, see `legion.server.auth`):

==========================================  ===============================================
``POST /v1/tasks``                          submit one task (idempotency key honoured)
``POST /v1/tasks:batch``                    submit many
``GET  /v1/tasks``                          list, filtered by status, agent and time; paged
``GET  /v1/tasks/{id}``                     a task with its steps
``POST /v1/tasks/{id}:cancel``              cancel (409: it succeeded, failed or died)
``POST /v1/tasks/{id}:retry``               queue a dead (failed, cancelled) task again
``GET  /v1/tasks/{id}/events``              the task's changes as server-sent events
``GET  /v1/progress``                       the run's progress as server-sent events
``GET  /v1/statistics``                     the run now
``GET  /v1/workers``                        workers and their health
``GET  /v1/key``                            the request's key: its tenant, admin or not
``GET  /metrics``                           Prometheus metrics
``GET  /healthz``                           readiness: store and worker (no key needed)
``GET  /livez``                             liveness: the worker (no key needed)
``GET  /openapi.json``                      this API's OpenAPI document
``GET  /``, ``/tasks/{id}``                 the dashboard
==========================================  ===============================================

Errors answer JSON ``{"detail": ...}`` and never a stack trace: 401/403 (key), 404 (no
such task, or another tenant's), 409, 413 (body larger than the limit), 422 (``detail``
lists the fields at fault, with ``loc``, ``msg`` and ``type``: a body that is not JSON,
``json_invalid``, or not UTF-8, ``utf8``; an idempotency key used before with another agent
or input, ``idempotency_conflict``), 429 (the tenant is over its submit rate or queued
tasks; ``Retry-After``), 503 (the server is saturated, or the store is
unreachable, busy or too slow; every 503 carries ``Retry-After``), 507 (the store's
disk is full: nothing was written), 500 (anything else, logged with its traceback on the server).

Tenants: every API key belongs to one (see `legion.server.auth`); a key sees and
changes its tenant's tasks only, an admin key every tenant's.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from legion import __version__
from legion.agent import Agent
from legion.errors import StorageFull, StoreError
from legion.server import dashboard, openapi, ops_api, signals_api, streams, tasks_api
from legion.server.admission import InProgressLimit, Shed
from legion.server.auth import CHALLENGES, AuthError
from legion.server.body_limit import BodyLimit
from legion.server.deps import ServerState
from legion.server.head import HeadAsGet
from legion.server.retry_after import RETRY_AFTER_SECONDS, RetryAfter
from legion.server.settings import ServerSettings

log = logging.getLogger("legion.server")


class _App(FastAPI):
    """FastAPI, with the submit routes' bodies and the served agents' inputs in the OpenAPI
    document (see `legion.server.openapi`), behind the bound on requests in progress.

    The bound is consulted first, before FastAPI's and Starlette's middleware, routing and
    error handling: under overload most requests are refused, and a refusal that went
    through all of that cost the server as much CPU as a third of an admitted submission,
    time the admitted requests then waited for in the event loop."""

    def __init__(
        self,
        *,
        agents: Mapping[str, Agent],
        settings: ServerSettings,
        queue_delay: Callable[[], float | None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._agents = agents
        self.admission = InProgressLimit(
            functools.partial(FastAPI.__call__, self),
            limit=settings.max_in_progress,
            target_latency=settings.target_latency,
            queue_delay=queue_delay,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.admission(scope, receive, send)
        except BaseExceptionGroup as group:
            if not client_left(group):
                raise

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            # FastAPI keeps its document as it makes it: one that failed half-way through
            # the agents' schemas was served, incomplete, from then on.
            try:
                self.openapi_schema = openapi.complete(super().openapi(), self._agents)
            except BaseException:
                self.openapi_schema = None
                raise
        return self.openapi_schema


def create_app(state: ServerState) -> FastAPI:
    """The application serving ``state``'s runtime."""
    app = _App(
        agents=state.agents,
        settings=state.settings,
        queue_delay=state.runtime.store.queue_delay,
        title="legion",
        version=__version__,
        summary="Run AI agents at throughput scale: submit tasks, follow them, watch the run.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by ops_api, behind the API key
        # A path with a slash too many is 404: the redirect named whatever host the
        # request's Host header did (http://evil.example/v1/tasks), without a key.
        redirect_slashes=False,
    )
    app.add_middleware(
        BodyLimit,
        max_bytes=state.settings.max_body_bytes,
        body_seconds=state.settings.body_seconds,
    )
    app.add_middleware(RetryAfter)
    app.add_middleware(HeadAsGet)
    app.state.legion = state
    app.include_router(tasks_api.router)
    app.include_router(signals_api.router)
    app.include_router(tasks_api.unknown_actions)  # after every router with task actions
    app.include_router(streams.router)
    app.include_router(ops_api.public)
    app.include_router(ops_api.router)
    app.include_router(dashboard.router)
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(Shed, _shed)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(Exception, _internal_error)
    return app


def admission_of(app: FastAPI) -> InProgressLimit | None:
    """The bound on requests in progress of an application `create_app` made."""
    return app.admission if isinstance(app, _App) else None


def create_metrics_app(state: ServerState) -> FastAPI:
    """``/metrics`` alone, without a key: for a port Prometheus scrapes (loopback unless
    the server is told otherwise)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.legion = state
    app.include_router(ops_api.metrics_only)
    return app


async def _auth_error(request: Request, exc: Exception) -> JSONResponse:
    refused = cast(AuthError, exc)
    response = JSONResponse({"detail": refused.message}, status_code=refused.status)
    if refused.status == 401:
        for challenge in CHALLENGES:
            response.headers.append("WWW-Authenticate", challenge)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, except that a 405 lists every method of the path in ``Allow``
    (Starlette names only those of the first route whose path matched)."""
    refused = cast(StarletteHTTPException, exc)
    if refused.status_code == 405:
        allowed = _allowed(request)
        if allowed:
            refused = StarletteHTTPException(405, refused.detail, {"Allow": allowed})
    return await http_exception_handler(request, refused)


_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _allowed(request: Request) -> str:
    """The methods the OpenAPI document gives the request's path: of the most specific
    documented path that matches (``/v1/tasks/5:cancel`` matches ``/v1/tasks/{task_id}``
    too, but ``/v1/tasks/{task_id}:cancel`` names more of it)."""
    paths: dict[str, Any] = request.app.openapi().get("paths", {})
    found = [
        (len(_PARAM.sub("", template)), template)
        for template in paths
        if _template(template).fullmatch(request.url.path)
    ]
    if not found:
        return ""
    _, best = max(found)
    return ", ".join(sorted(m.upper() for m in paths[best] if m in _METHODS))


_PARAM = re.compile(r"\{[^}]*\}")


@functools.cache
def _template(path: str) -> re.Pattern[str]:
    parts = _PARAM.split(path)
    return re.compile("[^/]+".join(re.escape(p) for p in parts))


async def _shed(request: Request, exc: Exception) -> JSONResponse:
    return cast(Shed, exc).response()


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    detail = [_field_error(e) for e in cast(RequestValidationError, exc).errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _field_error(error: Any) -> dict[str, Any]:
    """Where and what, without echoing the input back."""
    if not isinstance(error, dict):
        return {"type": "invalid", "loc": [], "msg": str(error)}
    return {
        "type": str(error.get("type", "invalid")),
        "loc": [p if isinstance(p, int) else str(p) for p in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
    }


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    if isinstance(exc, StorageFull):
        detail = (
            "the store is full: nothing was written. Free space on the store's disk, then try again"
        )
        return JSONResponse({"detail": detail}, status_code=507)
    return JSONResponse(
        {"detail": "the store is unavailable; try again later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def client_left(exc: BaseException) -> bool:
    """Whether ``exc`` only says that an event stream's client left in the middle of it:
    FastAPI's keep-alive task is then still sending into the stream the ended response
    closed, and its task group raises that (a group of `anyio.BrokenResourceError`)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(client_left(e) for e in exc.exceptions)
    return isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    if client_left(exc):  # nothing failed, and the response has started: nothing to send
        return JSONResponse({"detail": "the client left"}, status_code=499)
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)
