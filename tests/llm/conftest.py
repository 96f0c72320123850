"""Fixtures starting simulators and providers that are always stopped and closed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from legion.llm import Provider
from legion.sim import SimConfig, Simulator

StartSimulator = Callable[..., Awaitable[Simulator]]
P = TypeVar("P", bound=Provider)


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start a simulator with the given `SimConfig` settings (and ``clock``);
    all are stopped at teardown."""
    simulators: list[Simulator] = []

    async def start(clock: Callable[[], float] | None = None, **settings: Any) -> Simulator:
        config = SimConfig(**settings)
        simulator = Simulator(config) if clock is None else Simulator(config, clock=clock)
        await simulator.start()
        simulators.append(simulator)
        return simulator

    yield start
    for simulator in simulators:
        await simulator.stop()


class Closing:
    """Registers providers to close at teardown."""

    def __init__(self) -> None:
        self.providers: list[Provider] = []

    def __call__(self, provider: P) -> P:
        self.providers.append(provider)
        return provider


@pytest.fixture
async def closing() -> AsyncIterator[Closing]:
    registry = Closing()
    yield registry
    for provider in registry.providers:
        await provider.aclose()
