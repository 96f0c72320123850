"""The ``Executor`` interface: run one agent call somewhere, answer its result."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from legion.agent import Agent
    from legion.context import Context


class Executor(Protocol):
    """Runs ``agent.fn(ctx, **kwargs)`` somewhere and answers what it returned.

    Errors the agent raised are raised again here (a crash of the place it ran in
    becomes an `legion.errors.AgentError` saying what happened). Cancelling
    `run` must stop the remote call. The worker owns the executor: it calls
    `check` for every agent it is given, `start` before the first call
    and `aclose` after the last.
    """

    name: str

    def check(self, agent: Agent) -> None:
        """Raise `legion.errors.ConfigError` if this executor cannot run ``agent``."""
        ...

    async def start(self) -> None: ...

    async def run(self, agent: Agent, ctx: Context, kwargs: Mapping[str, Any]) -> Any: ...

    async def aclose(self) -> None: ...

    def queued(self) -> Collection[asyncio.Task[Any]]:
        """The instances (their tasks) waiting for room to start: a worker that drains
        gives them back rather than start them."""
        ...
