"""`SimulatedProvider`: the provider simulator, in-process, as a provider.

It starts a `legion.sim.Simulator` on a loopback port and talks to it over
real HTTP through an `OpenAIProvider`, so a rehearsal exercises the same
client code, connection pool and error paths as production.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from legion.llm.embeddings import EmbedRequest, EmbedResult
from legion.llm.openai import OpenAIProvider
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest

if TYPE_CHECKING:
    from legion.sim import SimConfig, Simulator


class SimulatedProvider:
    """A simulator configured by ``config``, started by `start` (or ``async
    with``) and stopped by `aclose`; ``http`` passes the other options of
    `OpenAIProvider` (``ttfb_timeout``, ``max_response_bytes``...)."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        name: str = "sim",
        max_connections: int = 0,
        stream_idle_timeout: float = 30.0,
        **http: Any,
    ) -> None:
        # The simulator (an aiohttp server) is imported only when a simulated route is made.
        from legion.sim import Simulator

        self._name = name
        self._simulator = Simulator(config)
        self._max_connections = max_connections
        self._stream_idle_timeout = stream_idle_timeout
        self._http = http
        self._client: OpenAIProvider | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def simulator(self) -> Simulator:
        """The simulator, for its URL and statistics."""
        return self._simulator

    async def start(self) -> None:
        """Start the simulator; calls can be made once this returns."""
        await self._simulator.start()
        self._client = OpenAIProvider(
            base_url=self._simulator.base_url,
            api_key=self._simulator.config.api_key,
            name=self._name,
            max_connections=self._max_connections,
            stream_idle_timeout=self._stream_idle_timeout,
            key_env="the simulator's api_key",
            **self._http,
        )

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        """One chat completion; see `legion.llm.provider.Provider.chat`."""
        if self._client is None:
            raise RuntimeError("the SimulatedProvider is not started")
        return await self._client.chat(request, timeout=timeout)

    async def embed(self, request: EmbedRequest, *, timeout: float) -> EmbedResult:  # noqa: ASYNC109
        """Deterministic embeddings from the simulator's ``/v1/embeddings``."""
        if self._client is None:
            raise RuntimeError("the SimulatedProvider is not started")
        return await self._client.embed(request, timeout=timeout)

    async def aclose(self) -> None:
        """Close the connections and stop the simulator."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        await self._simulator.stop()

    async def __aenter__(self) -> SimulatedProvider:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
