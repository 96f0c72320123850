"""`Breaker`: one circuit breaker per route, so an outage costs waiting, not attempts.

States (`BreakerState`):

* **closed**: calls go through. ``failures`` transient failures in a row
  (5xx, timeouts, broken connections: `ProviderUnavailable`) open it. A 429
  is not a failure here: the route's `Capacity` answers rate limits.
* **open**: calls wait before they are sent; waiting fails nothing and
  spends no attempt. After ``open_for`` seconds one caller becomes the probe.
* **half-open**: one probe is in flight, the others wait. If the provider
  answers it (a success, or any answer that is not a transient failure) the
  breaker closes and everyone goes; if it fails, the breaker opens again for
  twice as long as the last time, at most ``max_open_for`` seconds.

Probes are at most one a second: one at a time, and never sooner than
``probe_interval`` after the last. Results of calls sent before the breaker
last changed state are stale and change nothing: they say how the provider
was, not how it is.

Time comes from an injected `Timer`, so tests jump it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import enum
import math
from dataclasses import dataclass

from legion.llm.timer import AsyncioTimer, Timer


class BreakerState(enum.IntEnum):
    """Where a breaker is; the value is the ``/metrics`` gauge."""

    CLOSED = 0  # calls go through
    OPEN = 1  # calls wait; a probe goes when the open period ends
    HALF_OPEN = 2  # one probe is in flight; the other calls wait for its answer


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a route's breaker opens, and for how long.

    ``failures``: transient failures in a row that open it (0: no breaker).
    ``open_for``: the first open period, in seconds; each failed probe
    doubles it, up to ``max_open_for``. ``probe_interval``: the least time
    between two probes.
    """

    failures: int = 5
    open_for: float = 1.0
    max_open_for: float = 30.0
    probe_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.failures < 0:
            raise ValueError("breaker failures must be >= 0 (0: no breaker)")
        if not (0 < self.open_for <= self.max_open_for) or not math.isfinite(self.max_open_for):
            raise ValueError("breaker open_for must be > 0 and <= max_open_for (finite)")
        if self.probe_interval <= 0:
            raise ValueError("breaker probe_interval must be > 0")

    @property
    def enabled(self) -> bool:
        return self.failures > 0


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot of a `Breaker`."""

    state: BreakerState
    consecutive_failures: int
    opened: int
    """Times it opened (a failed probe opening it again counts)."""
    probes: int
    """Probes sent."""
    waiting: int
    """Calls waiting for it now."""
    open_for: float
    """Seconds until the next probe may go (0 unless open)."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """Leave to send one call: `Breaker.wait_turn`'s answer, given back with the outcome."""

    epoch: int
    probe: bool


class Breaker:
    """The circuit breaker of one route (see the module's documentation)."""

    def __init__(self, settings: BreakerSettings | None = None, *, timer: Timer | None = None):
        self.settings = settings or BreakerSettings()
        self._timer: Timer = timer or AsyncioTimer()
        self._state = BreakerState.CLOSED
        self._epoch = 0  # bumped at each change of state
        self._failures = 0
        self._open_for = self.settings.open_for
        self._probe_at = -math.inf  # when the open period ends
        self._last_probe = -math.inf
        self._changed: asyncio.Future[None] | None = None
        self._opened = 0
        self._probes = 0
        self._waiting = 0
        self.answered = False
        """Whether the provider ever answered a call through this breaker: an open
        breaker is then an outage to wait out, not a route that never worked."""

    @property
    def state(self) -> BreakerState:
        return self._state

    async def wait_turn(self) -> Ticket:
        """Wait until a call may be sent: at once while closed; while open, until
        this caller is the probe or the breaker closes. Cancelling the wait is safe."""
        ticket = self.try_turn()
        if ticket is not None:
            return ticket
        self._waiting += 1
        try:
            while True:
                ticket = self.try_turn()  # the state changes while this caller waits
                if ticket is not None:
                    return ticket
                if self.state is BreakerState.OPEN:
                    await self._timer.sleep(self._probe_start() - self._timer.now())
                else:  # half-open: the probe's answer decides
                    await asyncio.shield(self._next_change())
        finally:
            self._waiting -= 1

    def try_turn(self, *, eager: bool = False) -> Ticket | None:
        """`wait_turn` without the wait: a ticket if a call may be sent now (closed, or
        open with a probe due), else ``None``. ``eager``: a probe is due a probe interval
        after the last one, however long the open period has grown (for callers that
        are refused at once rather than wait: one probe a second costs a provider that
        is down one call a second, and one that came back is found within a second, not
        up to ``max_open_for`` later)."""
        if self._state is BreakerState.CLOSED:
            return Ticket(self._epoch, probe=False)
        now = self._timer.now()
        due = self._last_probe + self.settings.probe_interval if eager else self._probe_start()
        if self._state is BreakerState.OPEN and now >= due:
            self._change(BreakerState.HALF_OPEN)
            self._last_probe = now
            self._probes += 1
            return Ticket(self._epoch, probe=True)
        return None

    def probe_due(self) -> bool:
        """Whether it is open and its next probe may go now (see `LLMClient.pick`)."""
        return self._state is BreakerState.OPEN and self._timer.now() >= self._probe_start()

    def _probe_start(self) -> float:
        """When the next probe may go: the open period's end, a probe interval on."""
        return max(self._probe_at, self._last_probe + self.settings.probe_interval)

    def succeeded(self, ticket: Ticket) -> None:
        """The call got an answer: a success, or an error that is not transient
        (a 429, a rejected request): the provider is up."""
        self.answered = True
        if ticket.epoch != self._epoch:
            return
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._open_for = self.settings.open_for
            self._change(BreakerState.CLOSED)

    def failed(self, ticket: Ticket) -> None:
        """The call failed in a way that may pass (5xx, timeout, broken connection)."""
        if ticket.epoch != self._epoch or not self.settings.enabled:
            return
        if ticket.probe:
            self._open_for = min(self._open_for * 2, self.settings.max_open_for)
            self._open()
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self.settings.failures:
            self._open()

    def abandoned(self, ticket: Ticket) -> None:
        """The call ended with no answer to judge (cancelled): a probe's turn
        passes to the next caller, no sooner than ``probe_interval``."""
        if ticket.probe and ticket.epoch == self._epoch:
            self._change(BreakerState.OPEN)

    def statistics(self) -> BreakerStatistics:
        open_for = 0.0
        if self._state is BreakerState.OPEN:
            start = max(self._probe_at, self._last_probe + self.settings.probe_interval)
            open_for = max(0.0, start - self._timer.now())
        return BreakerStatistics(
            state=self._state,
            consecutive_failures=self._failures,
            opened=self._opened,
            probes=self._probes,
            waiting=self._waiting,
            open_for=open_for,
        )

    def _open(self) -> None:
        self._opened += 1
        self._probe_at = self._timer.now() + self._open_for
        self._change(BreakerState.OPEN)

    def _change(self, state: BreakerState) -> None:
        self._state = state
        self._epoch += 1
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _next_change(self) -> asyncio.Future[None]:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed
