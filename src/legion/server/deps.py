"""What every route needs: the server's state, and the API key check."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from legion.agent import Agent
from legion.run.runtime import Runtime
from legion.server.admission import Shed, TenantLimits
from legion.server.auth import Authenticator, check_origin, one_header
from legion.server.metrics import Metrics
from legion.server.monitor import Monitor
from legion.server.retry_after import RETRY_AFTER_SECONDS
from legion.server.settings import ServerSettings
from legion.store.types import ApiKey


@dataclass(frozen=True, slots=True)
class ServerState:
    """The parts one server wires together; routes reach it through `StateDep`."""

    runtime: Runtime
    agents: Mapping[str, Agent]
    settings: ServerSettings
    monitor: Monitor
    metrics: Metrics
    auth: Authenticator
    limits: TenantLimits
    closing: asyncio.Event  # set when the server stops: event streams end


async def get_state(request: Request) -> ServerState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a thread
    # hand-off on every request that costs more than the route under load.
    return cast(ServerState, request.app.state.legion)


StateDep = Annotated[ServerState, Depends(get_state)]

# Declares the scheme in the OpenAPI document; the check itself is require_key's.
_bearer = HTTPBearer(auto_error=False, description="An API key from `legion keys create`.")


async def require_key(
    request: Request,
    state: StateDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The request's API key; 401 without a valid one, 403 for a revoked one. While the
    store does not answer (a call has hung past the monitor's `stuck_after`: a SQLite
    file locked by another program, a server that stopped answering), 503 at once: the
    request would wait behind that call (its key's check too) for as long as it lasts."""
    if not state.monitor.answers():
        raise Shed(
            503,
            "the store does not answer (locked by another process, or unreachable): "
            "nothing was done; try again later",
            RETRY_AFTER_SECONDS,
        )
    check_origin(request)
    return await state.auth.authenticate(one_header(request.headers.getlist("authorization")))


KeyDep = Annotated[ApiKey, Depends(require_key)]


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query(request: Request) -> None:
    """422 for a query parameter the route does not take: a misspelt or guessed filter
    (``?parent_id=``, ``?offset=``) would otherwise answer as if it were not there (the
    whole list for "the children"), as an unknown field of a body is refused."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema or not request.query_params:
        return  # (a route outside the document answers 404 or 405 whatever it is asked)
    known = _query_names(route.dependant)  # (a few names: no cache, and only with a query)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter (this route takes: {takes})",
                }
                for name in dict.fromkeys(unknown)
            ]
        )
