"""Helpers for testing code built on legion, including your own agents (docs/testing.md
shows a test of an agent, and what to know).

* `FakeClock`: virtual time. It is a `legion.clock.Clock`, so a `legion.Runtime`
  or a `legion.Worker` on it times out, heartbeats, expires and reaps leases and
  sleeps durably as the test moves time (`advance`, then the worker's `reap` for the
  timers' pass; await the runtime directly, not through `run`, whose autojump cannot
  see the store's thread); and a `legion.llm.timer.Timer`, so a
  `legion.llm.Capacity` or `legion.llm.LLMClient` built on it paces, pauses and
  backs off without real sleeping (`run` drives those): a test of a minute of traffic
  runs in milliseconds, deterministically.
* `ScaledClock`: real time sped up, shared by a simulator and a client to
  rehearse minutes of rate-limited traffic in seconds.
* `ScriptedProvider`: a provider that answers from a script.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from legion.errors import Permanent
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest, ChatResponse, RateLimitInfo, Usage

T = TypeVar("T")


class FakeClock:
    """Virtual time that moves only when a test moves it.

    ``now()`` (also ``monotonic()``) starts at ``start``; ``wall()`` starts at
    ``wall`` (by default the real wall clock when the fake one is made) and moves
    with it. ``await sleep(s)`` suspends the caller until time reaches
    ``now() + s``; ``call_later(s, callback)`` calls ``callback`` (in the event
    loop) then. Time moves in two ways:

    * ``await advance(s)``: moves time forward by ``s``, waking sleepers in
      deadline order (ties: in the order they fell asleep), each at its own
      deadline, and lets the event loop run after each wake-up so the woken
      code can act, and sleep again, before time moves on.
    * ``await run(awaitable)``: autojump. Runs ``awaitable``; whenever it and
      everything it started are stuck waiting on this clock, jumps straight
      to the next deadline. Returns the awaitable's result. For code that waits on
      this clock alone (an `LLMClient`, a `Capacity`): a `legion.Runtime`'s store
      works in a thread this clock cannot see, so it would jump while a write is under
      way (await a runtime directly, moving time with `advance`).

    "Lets the loop run" means ``settle_rounds`` iterations of the event loop,
    enough for any code that does no real I/O to reach its next sleep. Code
    under test must sleep through this clock only (not ``asyncio.sleep``).

    A `legion.Runtime` on this clock counts its ``drain_timeout`` on it too: closing
    one while an instance still runs waits until the test moves time past it (or give
    it ``drain_timeout=0``).
    """

    def __init__(
        self, start: float = 0.0, *, wall: float | None = None, settle_rounds: int = 50
    ) -> None:
        self._now = start
        self._wall_offset = (time.time() if wall is None else wall) - start
        self._settle_rounds = settle_rounds
        self._sleepers: list[tuple[float, int, asyncio.Future[None] | FakeTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        """Seconds since the epoch, on this clock."""
        return self._now + self._wall_offset

    def step_wall(self, seconds: float) -> None:
        """Move the wall clock by ``seconds`` (either way), the monotonic clock not: a
        host's clock set right (an NTP step), as a worker sees it."""
        self._wall_offset += seconds

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        """Call ``callback`` once time reaches ``now() + delay`` (at once, in the loop's
        next round, for ``delay <= 0``)."""
        timer = FakeTimer(callback)
        if delay <= 0:
            timer.fire()
        else:
            heapq.heappush(self._sleepers, (self._now + delay, next(self._order), timer))
        return timer

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
            waiter = heapq.heappop(sleepers)[2]
            if isinstance(waiter, FakeTimer):
                waiter.fire()
            elif not waiter.done():
                waiter.set_result(None)
        return True


class FakeTimer:
    """A timer of a `FakeClock` (see `FakeClock.call_later`)."""

    __slots__ = ("_callback", "_handle", "cancelled", "fired")

    def __init__(self, callback: Callable[[], object]) -> None:
        self._callback = callback
        self._handle: asyncio.Handle | None = None
        self.cancelled = False
        self.fired = False

    def done(self) -> bool:
        return self.cancelled or self.fired

    def cancel(self) -> None:
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()

    def fire(self) -> None:
        if not self.done():
            self.fired = True
            self._handle = asyncio.get_running_loop().call_soon(self._callback)


class ScaledClock:
    """Real time sped up ``speed`` times, for time-compressed rehearsals.

    Give ``now`` to a `legion.sim.Simulator` as its ``clock`` and the clock
    itself as the ``timer`` of a `legion.llm.Capacity` or
    `legion.llm.LLMClient`: both sides then agree that a minute passes in
    ``60 / speed`` real seconds, so per-minute rate limits, Retry-After
    pauses and backoffs play out at scale without the wait.
    """

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._speed = speed
        self._origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._origin) * self._speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self._speed)


class ScriptExhausted(Permanent, AssertionError):
    """A `ScriptedProvider` was asked more than its script answers."""


class ScriptedProvider:
    """A provider that plays a script, for testing code that calls LLMs.

    Each call takes the next item of ``script``: a `ChatResponse` (or plain
    text, answered with usage of 1 prompt and 1 completion token) to return,
    or an exception to raise. Every request is kept in ``requests``, and the timeout
    its attempt was given in ``timeouts``. A request past the end of the script raises
    `ScriptExhausted` (an `AssertionError`, and `legion.errors.Permanent`: its task
    fails at once, not retried as a provider's failure would be). A call an attempt
    replays from the record is not a request.
    """

    def __init__(
        self,
        script: Iterable[ChatResponse | str | BaseException],
        *,
        name: str = "scripted",
        rate_limits: RateLimitInfo | None = None,
    ) -> None:
        self._script = iter(script)
        self._name = name
        self._rate_limits = rate_limits or RateLimitInfo()
        self.requests: list[ChatRequest] = []
        self.timeouts: list[float] = []
        self.closed = False

    @property
    def name(self) -> str:
        return self._name

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        self.requests.append(request)
        self.timeouts.append(timeout)
        item = next(self._script, None)
        if item is None:
            last = request.messages[-1].get("content") if request.messages else None
            raise ScriptExhausted(
                f"{self._name}: request {len(self.requests)} is past the script of "
                f"{len(self.requests) - 1} answer(s); it asked: {str(last)[:200]!r}"
            )
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, str):
            item = ChatResponse(item, (), "stop", Usage(1, 1), request.model, self._name)
        return ChatResult(item, self._rate_limits)

    async def aclose(self) -> None:
        self.closed = True
