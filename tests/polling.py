"""Waiting in a test for a state that changes in another loop's task (a worker's, an
agent's), where no event says when it does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    """Poll ``condition`` until it holds; ``limit`` seconds bound a hung test, they are
    not a synchronisation."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110 - a state of another task, no event to wait on
            await asyncio.sleep(0.01)
