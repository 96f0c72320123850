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
from collections.abc import Callable, Coroutine
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


class StoreTime:
    """A worker's clock set to its store's time: the local clock's monotonic time, sleeps
    and timers as they are, and its wall time moved by the offset to the store's clock
    last measured (`follow`). On PostgreSQL that is the database's clock, which every
    worker shares: what one worker writes (a retry's not-before time, a capacity claim,
    a relayed pause) means the same to the others, whatever its host's clock says. An
    offset under `IN_STEP` is none: the local wall clock itself is read (on SQLite
    always, whose time is its host's)."""

    __slots__ = ("_local", "call_later", "monotonic", "offset", "sleep", "wall")

    IN_STEP = 0.25
    """Seconds of offset that count as none (a measure's round trip, a small drift)."""

    def __init__(self, local: Clock) -> None:
        self._local = local
        self.offset = 0.0
        # The local clock's own functions, not methods that call them (read on every
        # instance's start and end).
        self.wall: Callable[[], float] = local.wall
        self.monotonic: Callable[[], float] = local.monotonic
        self.sleep: Callable[[float], Coroutine[Any, Any, None]] = local.sleep
        self.call_later: Callable[[float, Callable[[], object]], Scheduled] = local.call_later

    def local_wall(self) -> float:
        """The local clock's wall time (to measure the offset by)."""
        return self._local.wall()

    def follow(self, store_now: float, local_now: float) -> None:
        """The store said ``store_now`` when this clock read ``local_now``."""
        offset = store_now - local_now
        if abs(offset) < self.IN_STEP:
            offset = 0.0
        if offset == self.offset:
            return
        self.offset = offset
        local = self._local.wall
        self.wall = local if offset == 0.0 else lambda: local() + offset


class ForwardSteps:
    """Forward steps of a store's clock, as one process sees them against its monotonic
    clock: an NTP correction of the host's clock, which is a SQLite store's.

    Leases and heartbeats are stamped on the store's clock. Right after it steps ahead,
    every one stamped before the step looks that much older: every lease of every other
    live worker looked expired, and the reaper took them back (each of their tasks ran
    again from its last step). For a while after a step (``hold``: a lease period), a
    reaper judges ages by the clock as it ran before it: ``store_now - behind(...)``. By
    then every live worker has stamped its leases and heartbeat again on the stepped
    clock. A step back only makes ages look younger: a dead worker's leases are taken
    back that much later. (On PostgreSQL the database judges its leases' expiry by its
    own clock; a step of the database server's clock is seen here only for heartbeats.)"""

    __slots__ = ("_last", "_steps")

    SMALLEST = 1.0
    """Seconds of a jump that count as a step (less: a slow round trip, a drift)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._steps: list[tuple[float, float]] = []  # (until, seconds ahead)

    def behind(self, store_now: float, monotonic: float, hold: float) -> float:
        """How far to judge ages behind ``store_now`` (read at ``monotonic``): the sum of
        the forward steps seen in the last ``hold`` seconds."""
        offset = store_now - monotonic
        if self._last is not None and offset - self._last >= self.SMALLEST:
            self._steps.append((monotonic + hold, offset - self._last))
        self._last = offset
        if self._steps:
            self._steps = [s for s in self._steps if s[0] > monotonic]
        return sum(seconds for _, seconds in self._steps)


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
