"""Rate-limit arithmetic of the simulator: request and token windows, a
concurrency cap, and the headers a real provider sends about them.

Everything here is pure: time comes from an injected clock (a callable
returning monotonic seconds), so the arithmetic is tested with a fake clock
and no sleeping.

Windows are 60 s long, like the per-minute limits of real providers, and come
in two kinds:

* sliding: capacity used at time ``t`` comes back at ``t + 60``.
* fixed: all capacity comes back at each boundary of a 60 s grid that starts
  when the limiter is built.

A request is admitted when it fits both windows and a concurrency slot is
free; it then consumes one request and its token charge (see
`legion.sim.config.SimConfig.tpm` for what is charged). Time values reported
are:

* reset (``x-ratelimit-reset-*``): time until the window is back to its full
  capacity, OpenAI's meaning of the header;
* Retry-After: time until the rejected request would fit, given what is
  recorded now. For the concurrency cap, which no clock governs, a
  configured constant.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from legion.sim.config import WINDOW_SECONDS, units_per_window

if TYPE_CHECKING:
    from legion.sim.config import SimConfig

Clock = Callable[[], float]
"""Returns monotonic time in seconds."""

RejectReason = Literal[
    "requests", "tokens", "input_tokens", "output_tokens", "concurrency", "too_large"
]

# Compact the sliding window's lists once this many expired entries pile up.
_COMPACT_AFTER = 4096


class Window(Protocol):
    """A capacity of ``limit`` units per window."""

    limit: int

    def used(self, now: float) -> int:
        """Units counted in the window at ``now`` (may exceed ``limit``)."""

    def consume(self, amount: int, now: float) -> None:
        """Count ``amount`` units at ``now``, even beyond the limit."""

    def wait_time(self, amount: int, now: float) -> float:
        """Seconds until ``amount`` more units fit: 0 if they fit now, ``inf``
        if they never can (``amount > limit``)."""

    def reset_time(self, now: float) -> float:
        """Seconds until the window is back to its full capacity."""


class SlidingWindow:
    """Each unit consumed at ``t`` stays counted until ``t + window``.

    Entries are kept in time order with the running total consumed, so
    expiry and "when will N units be free" are binary searches: cost stays
    logarithmic even with hundreds of thousands of entries in the window.
    """

    __slots__ = ("_expired", "_head", "_marks", "_times", "_total", "limit", "window")

    def __init__(self, limit: int, window: float = WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._times: list[float] = []  # time of each entry, non-decreasing
        self._marks: list[int] = []  # total consumed up to and including each entry
        self._head = 0  # index of the oldest entry still in the window
        self._total = 0  # total ever consumed
        self._expired = 0  # total consumed by entries that left the window

    def _expire(self, now: float) -> None:
        head = bisect_right(self._times, now - self.window, self._head)
        if head == self._head:
            return
        self._expired = self._marks[head - 1]
        if head >= _COMPACT_AFTER and head * 2 >= len(self._times):
            del self._times[:head]
            del self._marks[:head]
            head = 0
        self._head = head

    def used(self, now: float) -> int:
        self._expire(now)
        return self._total - self._expired

    def consume(self, amount: int, now: float) -> None:
        self._expire(now)
        self._total += amount
        if self._head < len(self._times) and self._times[-1] == now:
            self._marks[-1] = self._total
        else:
            self._times.append(now)
            self._marks.append(self._total)

    def wait_time(self, amount: int, now: float) -> float:
        excess = self.used(now) + amount - self.limit
        if excess <= 0:
            return 0.0
        if amount > self.limit:
            return math.inf
        # The first entry whose expiry frees at least `excess` units.
        index = bisect_left(self._marks, self._expired + excess, self._head)
        return self._times[index] + self.window - now

    def reset_time(self, now: float) -> float:
        if self.used(now) == 0:
            return 0.0
        return self._times[-1] + self.window - now


class FixedWindow:
    """All units come back at each boundary of a grid of ``window`` seconds
    starting at ``origin``."""

    __slots__ = ("_end", "_origin", "_used", "limit", "window")

    def __init__(self, limit: int, origin: float, window: float = WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._origin = origin
        self._end = origin + window
        self._used = 0

    def _roll(self, now: float) -> None:
        if now >= self._end:
            elapsed = math.floor((now - self._origin) / self.window)
            self._end = self._origin + (elapsed + 1) * self.window
            self._used = 0

    def used(self, now: float) -> int:
        self._roll(now)
        return self._used

    def consume(self, amount: int, now: float) -> None:
        self._roll(now)
        self._used += amount

    def wait_time(self, amount: int, now: float) -> float:
        self._roll(now)
        if self._used + amount <= self.limit:
            return 0.0
        if amount > self.limit:
            return math.inf
        return self._end - now

    def reset_time(self, now: float) -> float:
        self._roll(now)
        return self._end - now if self._used else 0.0


class Admission(NamedTuple):
    """The outcome of `RateLimiter.admit` and the state reported in headers.

    Request and token fields are ``None`` for a dimension without a limit.
    Times are seconds.
    """

    allowed: bool
    reason: RejectReason | None
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests: float
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens: float
    retry_after: float | None
    """Seconds to wait before retrying; ``None`` when admitted, and for a
    request larger than the token limit, which no wait can admit."""
    limit_input_tokens: int | None = None
    remaining_input_tokens: int | None = None
    reset_input_tokens: float = 0.0
    limit_output_tokens: int | None = None
    remaining_output_tokens: int | None = None
    reset_output_tokens: float = 0.0
    too_large: tuple[str, int, int, float] | None = None
    """For a request larger than a window holds: which tokens (``"tokens"``, ``"input
    tokens"``, ``"output tokens"``), how many it asked, the most one window admits, and
    the window's seconds."""

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers, plus ``Retry-After`` (whole seconds,
        rounded up, as HTTP requires) and ``retry-after-ms`` (milliseconds,
        rounded up, the precise value that OpenAI's SDKs read first) on a
        rejection. A request that can never fit gets ``x-should-retry:
        false`` instead of a Retry-After."""
        headers: dict[str, str] = {}
        if self.limit_requests is not None:
            headers["x-ratelimit-limit-requests"] = str(self.limit_requests)
            headers["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            headers["x-ratelimit-reset-requests"] = format_reset(self.reset_requests)
        if self.limit_tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            headers["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            headers["x-ratelimit-reset-tokens"] = format_reset(self.reset_tokens)
        if self.retry_after is not None:
            millis = _ceil_millis(self.retry_after)
            headers["retry-after"] = str(max(1, -(-millis // 1000)))
            headers["retry-after-ms"] = str(max(1, millis))
        elif self.reason == "too_large":
            headers["x-should-retry"] = "false"
        return headers


class RateLimiter:
    """Request and token windows plus a concurrency cap.

    `admit` either takes a slot (the caller must `release` it when the
    request ends) or reports why not and how long to wait.
    """

    __slots__ = (
        "_clock",
        "_concurrency_retry_after",
        "_count_rejected",
        "_in_flight",
        "_input",
        "_max_concurrency",
        "_output",
        "_requests",
        "_scale",
        "_tokens",
    )

    def __init__(
        self,
        *,
        clock: Clock,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        window: Literal["sliding", "fixed"] = "sliding",
        window_seconds: float = WINDOW_SECONDS,
        rejected_count_against_limit: bool = False,
        concurrency_retry_after: float = 1.0,
        itpm: int | None = None,
        otpm: int | None = None,
    ) -> None:
        self._clock = clock
        origin = clock()
        # A per-minute limit may be enforced over shorter windows ("quantized", as
        # providers do): 6,000 rpm over 1 s windows admits 100 requests a second.
        # Headers still speak per minute.
        self._scale = WINDOW_SECONDS / window_seconds

        def make(limit: int | None) -> Window | None:
            if limit is None:
                return None
            per_window = units_per_window(limit, window_seconds)
            if window == "fixed":
                return FixedWindow(per_window, origin, window_seconds)
            return SlidingWindow(per_window, window_seconds)

        self._requests = make(rpm)
        self._tokens = make(tpm)
        self._input = make(itpm)
        self._output = make(otpm)
        self._max_concurrency = max_concurrency
        self._count_rejected = rejected_count_against_limit
        self._concurrency_retry_after = concurrency_retry_after
        self._in_flight = 0

    @classmethod
    def from_config(cls, config: SimConfig, clock: Clock) -> RateLimiter:
        """A limiter with the limits of ``config``."""
        return cls(
            clock=clock,
            rpm=config.rpm,
            tpm=config.tpm,
            max_concurrency=config.max_concurrency,
            window=config.window,
            window_seconds=config.window_seconds,
            rejected_count_against_limit=config.rejected_count_against_limit,
            concurrency_retry_after=config.concurrency_retry_after,
            itpm=config.itpm,
            otpm=config.otpm,
        )

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet released."""
        return self._in_flight

    def admit(self, tokens: int, input_tokens: int = 0, output_tokens: int = 0) -> Admission:
        """Admit a request charged ``tokens`` tokens (``input_tokens`` and
        ``output_tokens`` of them against the input and output limits), or reject it."""
        now = self._clock()
        requests, token_window = self._requests, self._tokens
        named: tuple[tuple[Window | None, int, RejectReason], ...] = (
            (self._input, input_tokens, "input_tokens"),
            (self._output, output_tokens, "output_tokens"),
        )
        apart = [(window, amount, why) for window, amount, why in named if window is not None]
        reason: RejectReason
        if self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
            reason = "concurrency"
        elif (token_window is not None and tokens > token_window.limit) or any(
            amount > window.limit for window, amount, _ in apart
        ):
            reason = "too_large"
            over = [(token_window, tokens, "tokens")] if token_window is not None else []
            over += [(w, amount, why.replace("_", " ")) for w, amount, why in apart]
            window, asked, what = next((w, a, n) for w, a, n in over if a > w.limit)
            too_large = (what, asked, window.limit, WINDOW_SECONDS / self._scale)
        elif requests is not None and requests.wait_time(1, now) > 0.0:
            reason = "requests"
        elif token_window is not None and token_window.wait_time(tokens, now) > 0.0:
            reason = "tokens"
        elif any(window.wait_time(amount, now) > 0.0 for window, amount, _ in apart):
            reason = next(
                why for window, amount, why in apart if window.wait_time(amount, now) > 0.0
            )
        else:
            if requests is not None:
                requests.consume(1, now)
            if token_window is not None:
                token_window.consume(tokens, now)
            for window, amount, _ in apart:
                window.consume(amount, now)
            self._in_flight += 1
            return self._state(True, None, None, now)

        if self._count_rejected and requests is not None:
            requests.consume(1, now)
        retry_after: float | None
        if reason == "concurrency":
            retry_after = self._concurrency_retry_after
        elif reason == "too_large":
            return self._state(False, reason, None, now)._replace(too_large=too_large)
        else:
            retry_after = max(
                requests.wait_time(1, now) if requests is not None else 0.0,
                token_window.wait_time(tokens, now) if token_window is not None else 0.0,
                *(window.wait_time(amount, now) for window, amount, _ in apart),
            )
        return self._state(False, reason, retry_after, now)

    def release(self) -> None:
        """Free the concurrency slot of an admitted request."""
        self._in_flight -= 1

    def _state(
        self, allowed: bool, reason: RejectReason | None, retry_after: float | None, now: float
    ) -> Admission:
        requests, tokens, scale = self._requests, self._tokens, self._scale
        return Admission(
            allowed,
            reason,
            round(requests.limit * scale) if requests is not None else None,
            round(max(0, requests.limit - requests.used(now)) * scale)
            if requests is not None
            else None,
            requests.reset_time(now) if requests is not None else 0.0,
            round(tokens.limit * scale) if tokens is not None else None,
            round(max(0, tokens.limit - tokens.used(now)) * scale) if tokens is not None else None,
            tokens.reset_time(now) if tokens is not None else 0.0,
            retry_after,
            *self._apart_state(self._input, now),
            *self._apart_state(self._output, now),
        )

    def _apart_state(
        self, window: Window | None, now: float
    ) -> tuple[int | None, int | None, float]:
        if window is None:
            return None, None, 0.0
        scale = self._scale
        return (
            round(window.limit * scale),
            round(max(0, window.limit - window.used(now)) * scale),
            window.reset_time(now),
        )


def _ceil_millis(seconds: float) -> int:
    # Rounding first keeps float noise (0.12 * 1000 == 120.00000000000001)
    # from adding a millisecond.
    return math.ceil(round(seconds * 1000.0, 6))


def format_reset(seconds: float) -> str:
    """Format a duration the way OpenAI's ``x-ratelimit-reset-*`` headers do
    (Go duration syntax), rounded up to the millisecond: ``"0s"``,
    ``"120ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h0m0s"``."""
    millis = _ceil_millis(seconds)
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    minutes, rest = divmod(millis, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
