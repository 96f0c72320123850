"""A simulator that calls the tools it is offered, and a client routed to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from legion.llm import LLMClient, open_client
from legion.sim import SimConfig, Simulator


@dataclass
class SimRoute:
    simulator: Simulator
    client: LLMClient

    @property
    def requests(self) -> int:
        return self.simulator.stats().requests_total


@pytest.fixture
async def sim_route() -> AsyncIterator[SimRoute]:
    simulator = Simulator(SimConfig(tool_calls=True))
    await simulator.start()
    client = await open_client(f"openai:sim-model@{simulator.base_url}")
    try:
        yield SimRoute(simulator, client)
    finally:
        await client.aclose()
        await simulator.stop()
