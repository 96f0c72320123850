"""Monotonic time for the LLM layer, injected so tests can jump it.

`Capacity` and `LLMClient` read the time and sleep only through a `Timer`.
Production uses `AsyncioTimer`; tests use `legion.testing.FakeClock`, whose
virtual time moves only when the test says so.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Timer(Protocol):
    """A monotonic clock and a way to sleep on it."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class AsyncioTimer:
    """Real time: `time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
