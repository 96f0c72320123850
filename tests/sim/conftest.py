"""Fixtures starting simulators and OpenAI clients that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

from legion.sim import SimConfig, Simulator

StartSimulator = Callable[..., Awaitable[Simulator]]
Connect = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start a simulator with the given `SimConfig` settings; all are stopped
    at teardown."""
    simulators: list[Simulator] = []

    async def start(**settings: Any) -> Simulator:
        simulator = Simulator(SimConfig(**settings))
        await simulator.start()
        simulators.append(simulator)
        return simulator

    yield start
    for simulator in simulators:
        await simulator.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """An official SDK client for a simulator, without retries; all are
    closed at teardown."""
    clients: list[openai.AsyncOpenAI] = []

    def make(
        simulator: Simulator, *, api_key: str = "x", timeout: float = 10.0
    ) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=simulator.base_url, api_key=api_key, max_retries=0, timeout=timeout
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
