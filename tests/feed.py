"""Reading the event feed in a test as a follower reads it.

On PostgreSQL an event is handed out once every transaction older than it has ended,
anywhere on the server (see ``0001_initial.sql``), and the store waits for that only
briefly. Tests running beside this one may hold a transaction open for longer, so a test
that expects its own events asks again, as a follower would, until they have all come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def at_least(
    count: int, read: Callable[[], Awaitable[Sequence[T]]], within: float = 60.0
) -> list[T]:
    """``read()``'s answer once it holds at least ``count`` items (all it holds, so that a
    test still sees any event it did not expect)."""
    return await until_holds(lambda items: len(items) >= count, read, within)


async def until_holds(
    enough: Callable[[Sequence[T]], bool],
    read: Callable[[], Awaitable[Sequence[T]]],
    within: float = 60.0,
) -> list[T]:
    """``read()``'s first answer that is ``enough``."""
    async with asyncio.timeout(within):
        while True:
            items = await read()
            if enough(items):
                return list(items)
            await asyncio.sleep(0.01)
