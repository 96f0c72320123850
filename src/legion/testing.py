"""Helpers for testing code built on legion, including your own agents.

`FakeClock` is virtual monotonic time: it satisfies `legion.llm.timer.Timer`,
so a `legion.llm.Capacity` or `legion.llm.LLMClient` built on it paces,
pauses and backs off without real sleeping, and a test of a minute of
traffic runs in milliseconds, deterministically.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class FakeClock:
    """Virtual time that moves only when a test moves it.

    ``now()`` starts at ``start``. ``await sleep(s)`` suspends the caller
    until time reaches ``now() + s``. Time moves in two ways:

    * ``await advance(s)``: moves time forward by ``s``, waking sleepers in
      deadline order (ties: in the order they fell asleep), each at its own
      deadline, and lets the event loop run after each wake-up so the woken
      code can act, and sleep again, before time moves on.
    * ``await run(awaitable)``: autojump. Runs ``awaitable``; whenever it and
      everything it started are stuck waiting on this clock, jumps straight
      to the next deadline. Returns the awaitable's result.

    "Lets the loop run" means ``settle_rounds`` iterations of the event loop,
    enough for any code that does no real I/O to reach its next sleep. Code
    under test must sleep through this clock only (not ``asyncio.sleep``).
    """

    def __init__(self, start: float = 0.0, *, settle_rounds: int = 50) -> None:
        self._now = start
        self._settle_rounds = settle_rounds
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        """How many callers are asleep on this clock."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    async def settle(self) -> None:
        """Let the event loop run until woken code has reached its next wait."""
        for _ in range(self._settle_rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers on the way."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        target = self._now + seconds
        await self.settle()
        while self._wake_next(target):
            await self.settle()
        self._now = target

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, jumping time whenever everything waits on this clock.

        Raises `RuntimeError` if the awaitable is stuck on something else
        (nothing asleep on the clock, and no progress).
        """
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                await self.settle()
                if task.done():
                    return task.result()
                if not self._wake_next(float("inf")):
                    raise RuntimeError(
                        "FakeClock.run: the awaitable waits on something other than this clock"
                    )
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _wake_next(self, limit: float) -> bool:
        """Wake the sleepers of the earliest deadline up to ``limit``; whether any."""
        sleepers = self._sleepers
        while sleepers and sleepers[0][2].done():  # cancelled sleepers
            heapq.heappop(sleepers)
        if not sleepers or sleepers[0][0] > limit:
            return False
        deadline = sleepers[0][0]
        self._now = max(self._now, deadline)
        while sleepers and sleepers[0][0] == deadline:
            future = heapq.heappop(sleepers)[2]
            if not future.done():
                future.set_result(None)
        return True
