"""The time of one attempt: running time, which its ``timeout`` bounds, and waiting time,
which it does not.

An instance that waits for capacity — a route's pace, a 429 pause, a route that is
failing, a free child process — is not running: its ``timeout`` (start-to-close, in
Temporal's words) pauses while it waits (schedule-to-start). Only an agent's
``deadline`` bounds the whole, waits included, and a task that reaches it says what it
waited for.

The runner gives every attempt an `AttemptTime` and makes it `current` for
the code the attempt runs (a context variable, so the tasks the agent creates share it);
whatever makes an instance wait reports the wait with `waiting`::

    with attempt.waiting("capacity on route default (120 rpm)"):
        await turn

Several waits of one attempt may overlap (calls under ``ctx.gather``): the attempt is
waiting while at least one of them goes on.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ORDER = itertools.count()


class AttemptTime:
    """Running and waiting time of one attempt, on a monotonic clock."""

    __slots__ = (
        "_now",
        "_reasons",
        "_since",
        "_waited",
        "_waits",
        "agent_name",
        "budget",
        "calls",
        "deadline",
        "order",
        "priority",
        "started",
        "tenant",
        "timeout",
    )

    def __init__(
        self,
        timeout: float | None,
        deadline: float | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
        priority: int = 0,
        tenant: str = "default",
        agent: str = "",
        budget: tuple[float | None, int | None, int | None] | None = None,
    ) -> None:
        self._now = now
        self.started = now()
        self.timeout = timeout
        """Seconds of running time allowed (``None``: no limit)."""
        self.deadline = deadline
        """Seconds allowed in all, waits included (``None``: no bound)."""
        self.order = next(_ORDER)
        """Start order in this process: calls of earlier attempts go first in a route's queue."""
        self.calls = 0
        """LLM calls made so far by this attempt."""
        self.priority = priority
        """The task's priority: a route serves the calls of higher priorities first."""
        self.tenant = tenant
        """Whose task it is: a route shares its capacity fairly between tenants."""
        self.agent_name = agent
        """The name of the agent the attempt runs."""
        self.budget = budget
        """The agent's LLM budget, ``(max_cost, max_tokens, max_calls)`` (``None``: none)."""
        self._waited = 0.0
        self._waits = 0
        self._since = 0.0
        # Seconds waited by reason: made at the first wait (most attempts never wait).
        self._reasons: dict[str, float] | None = None

    # -- what the waits report ------------------------------------------------------

    def begin_wait(self) -> None:
        if self._waits == 0:
            self._since = self._now()
        self._waits += 1

    def end_wait(self, reason: str, began: float) -> None:
        now = self._now()
        self._waits -= 1
        if self._waits == 0:
            self._waited += now - self._since
        reasons = self._reasons
        if reasons is None:
            reasons = self._reasons = {}
        reasons[reason] = reasons.get(reason, 0.0) + (now - began)

    # -- what the runner and the timers read -------------------------------------------

    @property
    def is_waiting(self) -> bool:
        return self._waits > 0

    def waited(self) -> float:
        """Seconds spent waiting so far (the one going on included)."""
        ongoing = self._now() - self._since if self._waits else 0.0
        return self._waited + ongoing

    def running(self) -> float:
        """Seconds spent running so far: all the time since the start, less the waits."""
        return self.split()[0]

    def split(self) -> tuple[float, float]:
        """``(running, waited)`` so far, read at one instant (one clock read)."""
        now = self._now()
        waited = self._waited + (now - self._since if self._waits else 0.0)
        return max(0.0, now - self.started - waited), waited

    def remaining(self) -> float | None:
        """Seconds this attempt may still run before its timeout or its deadline
        (``None``: neither is set). Waiting does not use it up, except the deadline's."""
        left = math.inf
        if self.timeout is not None:
            left = self.timeout - self.running()
        if self.deadline is not None:
            left = min(left, self.deadline - (self._now() - self.started))
        return None if left == math.inf else max(0.0, left)

    def wait_budget(self) -> float | None:
        """Seconds this attempt may still wait for one thing (a provider's Retry-After)
        before freeing its slot is the better choice: what its deadline leaves, else its
        whole timeout (``None``: neither is set). A longer wait puts the task back in the
        queue until then instead of holding a worker's slot through it."""
        if self.deadline is not None:
            return max(0.0, self.deadline - (self._now() - self.started))
        return self.timeout

    def due(self) -> float:
        """When the attempt's time is up, on the monotonic clock, if it waits no more
        (``math.inf``: not while it waits, or with neither a timeout nor a deadline)."""
        due = math.inf
        if self.timeout is not None and not self._waits:
            due = self.started + self._waited + self.timeout
        if self.deadline is not None:
            due = min(due, self.started + self.deadline)
        return due

    def past_deadline(self) -> bool:
        return self.deadline is not None and self._now() - self.started >= self.deadline

    def explain(self) -> str:
        """What the attempt did with its time: ``waited 95 s for capacity on route
        default (120 rpm); 0.4 s running``."""
        parts = [
            f"waited {_seconds(seconds)} for {reason}"
            for reason, seconds in sorted((self._reasons or {}).items(), key=lambda item: -item[1])
            if seconds >= 0.05  # (a wait that showed as "0.0 s" says nothing)
        ]
        parts.append(f"{_seconds(self.running())} running")
        return "; ".join(parts)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


CURRENT: ContextVar[AttemptTime | None] = ContextVar("legion_attempt", default=None)


def current() -> AttemptTime | None:
    """The attempt the calling code runs for, if any."""
    return CURRENT.get()


@contextmanager
def waiting(reason: str) -> Iterator[None]:
    """Report that the current attempt (if any) waits for ``reason`` while the block runs."""
    time_ = CURRENT.get()
    if time_ is None:
        yield
        return
    began = time_._now()
    time_.begin_wait()
    try:
        yield
    finally:
        time_.end_wait(reason, began)
