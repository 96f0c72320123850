"""Time, injected: the runtime reads the time, sleeps and sets timers through a `Clock`.

A clock has two times: ``wall()``, seconds since the epoch, which the stores keep (they
are shared between processes and machines), and ``monotonic()``, which measures
durations in this process (timeouts, heartbeat periods, how long a lease was last
confirmed). It sleeps (``await clock.sleep(s)``) and sets timers
(``clock.call_later(s, callback)``) on its own time.

The worker, the runtime, the journal and the shared capacity take a clock, the system's
(`system_clock`) by default; `legion.testing.FakeClock` is one whose time moves only
when a test moves it, so timeouts, heartbeats, lease expiry and reaping are tested
without waiting for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol


class Scheduled(Protocol):
    """A timer set with `Clock.call_later`."""

    def cancel(self) -> None:
        """Do not call the callback (if it has not been called yet)."""
        ...


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations only)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Scheduled:
        """Call ``callback`` in the running event loop once ``delay`` seconds have passed
        on this clock."""
        ...


class SystemClock:
    """Real time: `time.time`, `time.monotonic`, `asyncio.sleep` and the event loop's
    timers."""

    __slots__ = ()

    # The functions themselves, not methods that call them: read on every instance's
    # start and end.
    wall = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], object]) -> Scheduled:
        return asyncio.get_running_loop().call_later(delay, callback)


system_clock: Clock = SystemClock()


async def within(clock: Clock, future: asyncio.Future[Any], seconds: float) -> bool:
    """Wait until ``future`` is done or ``seconds`` have passed on ``clock``, whichever
    comes first; whether it is done. (``future`` is left as it is either way.)"""
    if future.done():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((future, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)
    return future.done()
