"""Operational routes: health, statistics, workers, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from legion.server.deps import KeyDep, StateDep, known_query, require_key
from legion.server.metrics import CONTENT_TYPE
from legion.server.schemas import HealthOut, KeyOut
from legion.server.snapshot import Snapshot, WorkerState
from legion.store.tenancy import DEFAULT_TENANT

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API key, or an unknown one."},
    403: {"description": "A revoked API key."},
}

public = APIRouter()
router = APIRouter(dependencies=[Depends(require_key), Depends(known_query)], responses=_ERRORS)
metrics_only = APIRouter()  # the metrics port's, without a key


@public.get(
    "/healthz",
    operation_id="healthz",
    tags=["ops"],
    responses={503: {"model": HealthOut, "description": "The store or the worker is down."}},
)
async def healthz(state: StateDep, response: Response) -> HealthOut:
    """Readiness: the store answers and the worker runs (no API key needed)."""
    if not state.monitor.answers() or state.runtime.fatal_error is not None:
        response.status_code = 503
        return HealthOut(status="unavailable")
    return HealthOut(status="ok")


@public.get(
    "/livez",
    operation_id="livez",
    tags=["ops"],
    responses={503: {"model": HealthOut, "description": "The worker stopped for good."}},
)
async def livez(state: StateDep, response: Response) -> HealthOut:
    """Liveness: the server answers and its worker has not stopped for good (no API key
    needed). A store that is down is not counted: restarting the server would not bring
    it back, and the server serves again as soon as the store does (``/healthz`` says
    when)."""
    if state.runtime.fatal_error is not None:
        response.status_code = 503
        return HealthOut(status="unavailable")
    return HealthOut(status="ok")


@router.get("/v1/statistics", operation_id="statistics", tags=["run"])
async def statistics(state: StateDep, key: KeyDep) -> Snapshot:
    """The run now: tasks by status, totals, rates and latency, workers, LLM capacity,
    failures. An admin key sees every tenant's; any other key its tenant's tasks alone
    (without the LLM routes, the workers' task counts and the scaling decision, which
    count every tenant's)."""
    snapshot = state.monitor.snapshot
    return snapshot if key.admin else state.monitor.for_tenant(snapshot, key.tenant)


@router.get("/v1/key", operation_id="key", tags=["ops"])
async def whoami(key: KeyDep) -> KeyOut:
    """The API key of this request: its tenant, and whether it is an admin key."""
    return KeyOut(id=key.id, name=key.name, tenant=key.tenant, admin=key.admin)


@router.get("/v1/workers", operation_id="workers", tags=["run"])
async def workers(state: StateDep, key: KeyDep) -> list[WorkerState]:
    """The workers registered in the store, with their health (and, for an admin key,
    the tasks each runs and has finished: every tenant's)."""
    workers = state.monitor.snapshot.workers
    if key.admin:
        return workers
    return [replace(w, in_flight=None, succeeded=None) for w in workers]


@router.get(
    "/metrics",
    operation_id="metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(state: StateDep, key: KeyDep) -> Response:
    """Prometheus metrics (see `legion.server.metrics` for the list): the server's, every
    tenant's tasks, for an admin key or one of the default tenant (the server's own, which
    its operator scrapes); a key of another tenant gets its tenant's tasks alone, as
    `/v1/statistics` counts them (without the LLM routes and the scaling decision). Also
    served without a key on ``--metrics-port`` (127.0.0.1 alone)."""
    snapshot = state.monitor.snapshot
    if not key.admin and key.tenant != DEFAULT_TENANT:
        snapshot = state.monitor.for_tenant(snapshot, key.tenant)
        return Response(state.metrics.render(snapshot, key.tenant), media_type=CONTENT_TYPE)
    return Response(state.metrics.render(snapshot), media_type=CONTENT_TYPE)


async def _all_metrics(state: StateDep) -> Response:
    """The metrics port's ``/metrics``: every tenant's, without a key."""
    return Response(state.metrics.render(state.monitor.snapshot), media_type=CONTENT_TYPE)


metrics_only.add_api_route("/metrics", _all_metrics, methods=["GET"], response_class=Response)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document of this API (made once, off the event loop: it takes a while)."""
    return JSONResponse(await asyncio.to_thread(request.app.openapi))
