"""What every route needs: the server's state, and the API key check."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from legion.agent import Agent
from legion.run.runtime import Runtime
from legion.server.admission import TenantLimits
from legion.server.auth import Authenticator, check_origin, one_header
from legion.server.metrics import Metrics
from legion.server.monitor import Monitor
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
    """The request's API key; 401 without a valid one, 403 for a revoked one."""
    check_origin(request)
    return await state.auth.authenticate(one_header(request.headers.getlist("authorization")))


KeyDep = Annotated[ApiKey, Depends(require_key)]
