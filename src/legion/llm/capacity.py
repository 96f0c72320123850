"""`Capacity`: one shared, adaptive limiter per provider and model.

Every agent instance in the process that calls a given route goes through
the same `Capacity`, which keeps the route under three limits: requests per
minute (RPM), tokens per minute (TPM) and calls in flight.

Pacing. Request starts are spread evenly: a virtual schedule (GCRA) lets one
request start every ``60 / rpm`` seconds at ``1 - burst`` (98 %) of the
limit, and a start may run ahead of the schedule by half of the ``burst``
share of ``window`` seconds (10 ms): enough for a start that woke late to
catch up, while no window of that length (or longer) ever sees more than the
limit, with the other half as a margin for jitter. ``window`` is 1 s by
default because providers quantize their per-minute limits over short
windows (6,000 rpm may be enforced as 100 requests in any second): a burst
of 1 % of a minute's budget would be rejected there. Tokens use a bucket
holding ``burst`` of one window's tokens, refilled continuously (a call
starts once the bucket holds its tokens and half of the rest, for the same
margin as requests): a call reserves its estimated tokens before it starts
(it may overdraw a full bucket, so a large call is never starved) and
`Slot.settle` refunds or charges the difference with the real usage
afterwards.

Adapting (AIMD). The effective rate is the limit times ``factor``, for RPM
and TPM alike. A 429 (`rate_limited`) multiplies ``factor`` by ``decrease``
(0.7), once per episode: a 429 answering a request sent before the last
decrease does not count again. The first 429 after a quiet spell (no
decrease for three ``recovery`` periods) multiplies it by ``first_decrease``
(0.9) only: a stray 429 costs little, and one more soon after brings the
full decrease. It also pauses every caller until the provider's Retry-After
(plus up to 10 % jitter, so processes sharing a key do not resume together),
after which starts resume at the pace, without a burst. Each settled call
started after the last decrease adds its share of the rate back (additive
increase), so that calls made at the full rate would add back the share of
the limit that the last decrease took (30 %, or 10 % after a first 429)
within ``recovery`` seconds (3 s): with only a TPM limit, a call's share is
in proportion to its tokens. Calls that were already under way when the
provider pushed back say nothing about the new rate. A quick recovery
matters at high rates: a stray 429 (the provider's window and ours out of
step by a few milliseconds) would otherwise cost a minute of reduced
throughput; against a limit truly lower than the configured one, the rate
saw-tooths under it with one 429 every few seconds.

Learning (`observe`). ``x-ratelimit-limit-*`` headers lower a configured
limit they undercut (until they stop undercutting it), and supply one where
none was configured.
``remaining`` headers lower what may start at once to what the provider
said was left when it admitted the call (counting from when the call was
sent: the headers are a call's latency old), which is how callers sharing
one API key (other workers) are felt before they cause 429s.

Waiting is FIFO-fair and spins nowhere: callers queue; only the head of the
queue waits on the clock, sleeping exactly until its turn (woken early only
when a freed slot or a token refund lets it start sooner), then hands the
head position to the next caller.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from legion.llm.timer import AsyncioTimer, Timer
from legion.llm.types import RateLimitInfo

_EPSILON = 1e-9  # seconds: a wait shorter than this is no wait


@dataclass(frozen=True, slots=True)
class CapacityStatistics:
    """A snapshot of a `Capacity`."""

    name: str
    limit_rpm: int | None
    """Configured requests per minute (``None``: not configured)."""
    limit_tpm: int | None
    """Configured tokens per minute."""
    learned_rpm: int | None
    """The provider's request limit from its headers, when it undercuts the
    configured one or none was configured."""
    learned_tpm: int | None
    effective_rpm: float | None
    """The request rate allowed now, after AIMD (``None``: no request limit)."""
    effective_tpm: float | None
    max_in_flight: int | None
    in_flight: int
    waiting: int
    """Callers queued for their turn."""
    requests: int
    """Calls started."""
    rate_limited: int
    """429s reported."""
    tokens_used: int
    """Real tokens of settled calls."""
    paused_for: float
    """Seconds until a 429 pause ends (0: not paused)."""


class _Blocker(enum.Enum):
    """What the head of the queue waits for."""

    TIME = "time"  # its start time under the pace or a pause: nothing can bring it closer
    TOKENS = "tokens"  # token refill; a refund can bring it closer
    SLOTS = "slots"  # a call in flight to end


class Slot:
    """A reserved call: settle it with the real token usage once known."""

    __slots__ = ("_capacity", "estimated_tokens", "settled", "started_at")

    def __init__(self, capacity: Capacity, estimated_tokens: int, started_at: float) -> None:
        self._capacity = capacity
        self.estimated_tokens = estimated_tokens
        self.started_at = started_at
        """When the call started, on the capacity's timer."""
        self.settled = False

    def settle(self, actual_tokens: int, *, refund: bool = True) -> None:
        """Record the call's real token usage: a success.

        The difference with the estimate is refunded (or charged) to the
        token budget, and the effective rate grows (additive increase).
        ``refund=False``: charge more when the call used more, but refund
        nothing when it used less, for a provider that counts the whole
        reservation (prompt and ``max_tokens``) against its limit.
        """
        if self.settled:
            raise RuntimeError("this slot is already settled")
        self.settled = True
        self._capacity._settle(self, actual_tokens, refund)


class _Reservation:
    __slots__ = ("_capacity", "_slot", "_tokens")

    def __init__(self, capacity: Capacity, tokens: int) -> None:
        self._capacity = capacity
        self._tokens = tokens
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        self._slot = await self._capacity._acquire(self._tokens)
        return self._slot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._capacity._release()


class _Waiter:
    __slots__ = ("tokens", "turn")

    def __init__(self, tokens: int, turn: asyncio.Future[None]) -> None:
        self.tokens = tokens
        self.turn = turn
        """Resolved when this waiter becomes the head of the queue."""


class Capacity:
    """The shared limiter of one provider/model route.

    Usage::

        async with capacity.reserve(estimated_tokens) as slot:
            result = await provider.chat(request, timeout=30)
            slot.settle(result.response.usage.total)
        capacity.observe(result.rate_limits)

    and ``capacity.rate_limited(retry_after)`` when the provider answers 429.
    A slot left unsettled (the call failed) keeps its estimate charged.

    ``rpm``, ``tpm`` and ``max_in_flight`` are ``None`` when unlimited;
    ``timer`` and ``rng`` are injected for tests; the other parameters tune
    the behaviour described in the module's documentation.
    """

    def __init__(
        self,
        name: str = "",
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        max_in_flight: int | None = None,
        timer: Timer | None = None,
        rng: random.Random | None = None,
        burst: float = 0.02,
        window: float = 1.0,
        decrease: float = 0.7,
        first_decrease: float = 0.9,
        recovery: float = 3.0,
        min_factor: float = 0.01,
        default_pause: float = 1.0,
        pause_jitter: float = 0.1,
    ) -> None:
        for label, limit in (("rpm", rpm), ("tpm", tpm), ("max_in_flight", max_in_flight)):
            if limit is not None and limit < 1:
                raise ValueError(f"{label} must be >= 1 or None, got {limit}")
        if not 0 < burst < 1 or not 0 < decrease < 1 or not 0 < min_factor <= 1:
            raise ValueError("burst and decrease must be in (0, 1), min_factor in (0, 1]")
        if not 0 < first_decrease < 1:
            raise ValueError(f"first_decrease must be in (0, 1), got {first_decrease}")
        if recovery <= 0:
            raise ValueError(f"recovery must be > 0 seconds, got {recovery}")
        if not 0 < window <= 60:
            raise ValueError(f"window must be in (0, 60] seconds, got {window}")
        self.name = name
        self._rpm = rpm
        self._tpm = tpm
        self._max_in_flight = max_in_flight
        self._timer: Timer = timer or AsyncioTimer()
        self._rng = rng or random.Random()
        self._burst = burst
        self._window = window
        self._decrease = decrease
        self._first_decrease = first_decrease
        self._drop = 1.0 - decrease  # what the last decrease took, as a share of the rate
        self._recovery = recovery
        self._min_factor = min_factor
        self._default_pause = default_pause
        self._pause_jitter = pause_jitter

        self._learned_rpm: int | None = None
        self._learned_tpm: int | None = None
        self._share = 1.0  # this process's part of limits shared with other workers
        self._factor = 1.0
        self._decreased_at = -math.inf
        self._paused_until = -math.inf
        self._tat = -math.inf  # theoretical arrival time of the next request (GCRA)
        self._level: float | None = None  # token bucket level; None: full
        self._refilled_at = 0.0
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._kick: asyncio.Future[None] | None = None
        self._blocker = _Blocker.TIME
        self._requests = 0
        self._rate_limited = 0
        self._tokens_used = 0

    # -- the public interface ---------------------------------------------------

    def reserve(self, estimated_tokens: int) -> _Reservation:
        """Wait for a turn to start a call estimated at ``estimated_tokens``
        tokens (``async with``); the call is in flight until the block ends."""
        if estimated_tokens < 0:
            raise ValueError("estimated_tokens must be >= 0")
        return _Reservation(self, estimated_tokens)

    def observe(self, info: RateLimitInfo, *, sent_at: float | None = None) -> None:
        """Learn from the rate-limit headers of an answer to a call started at
        ``sent_at`` on the timer (``None``: now).

        ``remaining`` counts describe the provider's window when it admitted the call,
        a whole call's latency ago: they allow at most that many starts from then on
        (the starts made since are already on the schedule) and that many tokens plus
        what has been refilled since. Read as if they described the window now, a
        full window seen half a second ago would hold back starts that fit today.
        """
        if info.limit_requests:
            self._learned_rpm = _undercut(info.limit_requests, self._rpm)
        if info.limit_tokens:
            self._learned_tpm = _undercut(info.limit_tokens, self._tpm)
        now = self._timer.now()
        since = now if sent_at is None else min(now, sent_at)
        interval = self._interval()
        if info.remaining_requests is not None and interval is not None:
            # Leave at most `remaining` starts allowed from `since` on.
            floor = since + self._tolerance() - (info.remaining_requests - 1) * interval
            self._tat = max(self._tat, floor)
        rate = self._token_rate()
        if info.remaining_tokens is not None and rate is not None:
            self._refill(now)
            level = self._level if self._level is not None else self._bucket_size()
            self._level = min(level, info.remaining_tokens + (now - since) * rate)

    def set_share(self, share: float) -> None:
        """Pace at ``share`` (a fraction in (0, 1]) of the limits: this process's part of
        a budget that other workers using the same API key spend too."""
        self._share = min(1.0, max(0.001, share))

    @property
    def share(self) -> float:
        return self._share

    def demand(self) -> tuple[int, int]:
        """Calls started so far and calls in flight or waiting now: what a process
        claims when it shares the limits with other workers."""
        return self._requests, self._in_flight + len(self._waiters)

    def rate_limited(
        self, retry_after: float | None, *, sent_at: float | None = None, relayed: bool = False
    ) -> None:
        """The provider answered 429: pause every caller for ``retry_after``
        seconds (``default_pause`` when unknown), with jitter, and lower the
        rate, unless the rejected call (started at ``sent_at`` on the timer,
        if known) predates the last decrease. ``relayed``: the 429 came to
        another worker sharing the limit; react alike, but do not count it here."""
        now = self._timer.now()
        if not relayed:
            self._rate_limited += 1
        fresh = sent_at > self._decreased_at if sent_at is not None else now >= self._paused_until
        if fresh:
            # A first 429 after a quiet spell is most likely stray (the provider's window
            # and ours a few milliseconds out of step); another one soon after means the
            # limit really is lower than the rate.
            isolated = now - self._decreased_at > 3.0 * self._recovery
            decrease = self._first_decrease if isolated else self._decrease
            self._factor = max(self._min_factor, self._factor * decrease)
            self._drop = 1.0 - decrease
            self._decreased_at = now
        pause = self._default_pause if retry_after is None else max(0.0, retry_after)
        until = now + pause * (1.0 + self._pause_jitter * self._rng.random())
        if until > self._paused_until:
            self._paused_until = until
        interval = self._interval()
        if interval is not None:  # resume at the pace, without a burst
            self._tat = max(self._tat, self._paused_until + self._tolerance())

    def statistics(self) -> CapacityStatistics:
        """A snapshot of the limits, the adaptation and the counters."""
        rpm, tpm = self._base_rpm(), self._base_tpm()
        return CapacityStatistics(
            name=self.name,
            limit_rpm=self._rpm,
            limit_tpm=self._tpm,
            learned_rpm=self._learned_rpm,
            learned_tpm=self._learned_tpm,
            effective_rpm=rpm * self._factor if rpm is not None else None,
            effective_tpm=tpm * self._factor if tpm is not None else None,
            max_in_flight=self._max_in_flight,
            in_flight=self._in_flight,
            waiting=len(self._waiters),
            requests=self._requests,
            rate_limited=self._rate_limited,
            tokens_used=self._tokens_used,
            paused_for=max(0.0, self._paused_until - self._timer.now()),
        )

    # -- limits -----------------------------------------------------------------

    def _base_rpm(self) -> float | None:
        rpm = self._learned_rpm if self._learned_rpm is not None else self._rpm
        return None if rpm is None else rpm * self._share

    def _base_tpm(self) -> float | None:
        tpm = self._learned_tpm if self._learned_tpm is not None else self._tpm
        return None if tpm is None else tpm * self._share

    def _interval(self) -> float | None:
        """Seconds between two paced request starts (``None``: no request limit)."""
        rpm = self._base_rpm()
        if rpm is None:
            return None
        return 60.0 / (rpm * self._factor * (1.0 - self._burst))

    def _tolerance(self) -> float:
        """How far ahead of the schedule a start may be, in seconds: the burst allowance.

        Pacing at ``1 - burst`` of the limit leaves ``burst`` of every window unused.
        Half of it (``burst * window / 2`` seconds) lets a start that woke late catch up
        with the schedule; the other half absorbs the jitter between a start here and its
        admission by the provider. Either way no window of ``window`` seconds holds more
        starts than the limit allows, at any rate.
        """
        return self._burst * self._window / 2.0

    def _token_rate(self) -> float | None:
        """Tokens refilled per second (``None``: no token limit)."""
        tpm = self._base_tpm()
        if tpm is None:
            return None
        return tpm * self._factor * (1.0 - self._burst) / 60.0

    def _bucket_size(self) -> float:
        tpm = self._base_tpm()
        assert tpm is not None
        return max(1.0, tpm * self._factor * self._burst * self._window / 60.0)

    def _refill(self, now: float) -> None:
        rate = self._token_rate()
        if rate is not None and self._level is not None:
            self._level = min(
                self._bucket_size(), self._level + max(0.0, now - self._refilled_at) * rate
            )
        self._refilled_at = now

    # -- waiting for a turn -----------------------------------------------------

    def _delay(self, tokens: int) -> tuple[float, _Blocker]:
        """How long the head must still wait to start a call of ``tokens``."""
        if self._max_in_flight is not None and self._in_flight >= self._max_in_flight:
            return math.inf, _Blocker.SLOTS
        now = self._timer.now()
        wait = self._paused_until - now
        interval = self._interval()
        if interval is not None:
            wait = max(wait, self._tat - self._tolerance() - now)
        rate = self._token_rate()
        if rate is not None:
            self._refill(now)
            size = self._bucket_size()
            level = self._level if self._level is not None else size
            # Like the request schedule: a call waits for its tokens plus half of what is
            # left of the allowance, the other half being the margin for jitter.
            short = (size + min(float(tokens), size)) / 2.0 - level
            if short > 0 and short / rate > wait:
                return short / rate, _Blocker.TOKENS
        return max(0.0, wait), _Blocker.TIME

    async def _acquire(self, tokens: int) -> Slot:
        if not self._waiters and self._delay(tokens)[0] <= _EPSILON:
            return self._take(tokens)
        waiter = _Waiter(tokens, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            waiter.turn.set_result(None)
        try:
            await waiter.turn
            while True:
                delay, blocker = self._delay(tokens)
                if delay <= _EPSILON:  # rounding must not leave a sleep of 1e-17 s
                    return self._take(tokens)
                await self._doze(delay, blocker)
        finally:
            self._leave(waiter)

    async def _doze(self, delay: float, blocker: _Blocker) -> None:
        """Sleep ``delay`` seconds, or until kicked when ``blocker`` can end sooner."""
        if blocker is _Blocker.TIME:
            await self._timer.sleep(delay)
            return
        kick: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._kick, self._blocker = kick, blocker
        try:
            if blocker is _Blocker.SLOTS:
                await kick
            else:
                sleeper = asyncio.ensure_future(self._timer.sleep(delay))
                try:
                    await asyncio.wait((kick, sleeper), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
        finally:
            self._kick = None

    def _wake(self, blocker: _Blocker) -> None:
        """Wake the head early if it waits for what just became available."""
        kick = self._kick
        if kick is not None and self._blocker is blocker and not kick.done():
            kick.set_result(None)

    def _leave(self, waiter: _Waiter) -> None:
        waiters = self._waiters
        if waiters and waiters[0] is waiter:
            waiters.popleft()
            if waiters and not waiters[0].turn.done():
                waiters[0].turn.set_result(None)
        else:
            waiters.remove(waiter)

    # -- starting, settling and ending calls --------------------------------------

    def _take(self, tokens: int) -> Slot:
        now = self._timer.now()
        self._in_flight += 1
        self._requests += 1
        interval = self._interval()
        if interval is not None:
            self._tat = max(self._tat, now) + interval
        if self._token_rate() is not None:
            level = self._level if self._level is not None else self._bucket_size()
            self._level = level - tokens
        return Slot(self, tokens, now)

    def _settle(self, slot: Slot, actual_tokens: int, refund: bool) -> None:
        self._tokens_used += actual_tokens
        charged = actual_tokens if refund else max(actual_tokens, slot.estimated_tokens)
        if self._token_rate() is not None and self._level is not None:
            self._refill(self._timer.now())
            self._level = min(self._bucket_size(), self._level + slot.estimated_tokens - charged)
            if charged < slot.estimated_tokens:
                self._wake(_Blocker.TOKENS)
        if slot.started_at <= self._decreased_at:
            return  # news from before the last decrease
        rpm, tpm = self._base_rpm(), self._base_tpm()
        # The calls (tokens) of `recovery` seconds at the full rate restore what one
        # decrease took.
        if rpm is not None:
            share = 60.0 / (rpm * self._recovery)
        elif tpm is not None:
            share = 60.0 * actual_tokens / (tpm * self._recovery)
        else:
            return
        self._factor = min(1.0, self._factor + self._drop * share)

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake(_Blocker.SLOTS)


def _undercut(advertised: int, configured: int | None) -> int | None:
    """The limit learned from a header: the advertised one where it is lower
    than the configured one (or none is configured), else none."""
    if configured is None or advertised < configured:
        return advertised
    return None
