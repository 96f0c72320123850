"""The ``Executor`` interface: run one agent call somewhere, answer its result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..agent import Agent
    from ..context import Context


class Executor(Protocol):
    """Runs ``agent.fn(ctx, **kwargs)`` somewhere and answers what it returned.

    Errors the agent raised are raised again here (a crash of the place it ran in
    becomes an :class:`~legion.errors.AgentError` saying what happened). Cancelling
    :meth:`run` must stop the remote call. The worker owns the executor: it calls
    :meth:`check` for every agent it is given, :meth:`start` before the first call
    and :meth:`aclose` after the last.
    """

    name: str

    def check(self, agent: Agent) -> None:
        """Raise :class:`~legion.errors.ConfigError` if this executor cannot run ``agent``."""
        ...

    async def start(self) -> None: ...

    async def run(self, agent: Agent, ctx: Context, kwargs: Mapping[str, Any]) -> Any: ...

    async def aclose(self) -> None: ...
