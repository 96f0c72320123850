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

Input and output tokens (``itpm``, ``otpm``). Providers that count input and
output tokens per minute apart (Anthropic, Groq) get one bucket each, like the
TPM bucket: a call reserves its estimated prompt tokens and its ``max_tokens``
(the provider's own estimate of output) and settles its real counts, so unused
output comes back at once, as those providers adjust it at the end of a call.
With ``cache_exempt`` (Anthropic routes), prompt tokens read from the provider's
cache are not counted against ``itpm``, as Anthropic does not count them.
``anthropic-ratelimit-{input,output}-tokens-*`` headers are learned like the others.

Finding the limit (``discover``). A route told no request limit, and whose
provider sends no ``x-ratelimit-*`` headers (vLLM, most gateways), finds one:
it starts at ``start_rate`` requests per second and doubles the rate every
``growth_period`` seconds while callers queue for it, the calls use half of it at
least (not held back by a token limit), and no 429 comes (slow start), so the
first second sees a small burst, not every caller at once. The
first 429 halves the rate found and ends slow start; from then on each 429
episode multiplies it by ``discover_decrease`` (0.9) and every success adds
``discover_growth`` (10 %) of the rate per second of calls (AIMD). Pauses after
a 429 last its ``retry-after-ms`` or ``Retry-After`` (``default_pause`` when
none, at most 0.1 s while finding the limit: the lower rate is the answer). A
limit told or learned from headers takes over at once. Only routes built with
``discover=True`` do this (`legion.llm.config` does for OpenAI-compatible and
Anthropic hosts); others without a request limit are not paced.

A failing route (``failing``: ``failing_after`` answers in a row that were 429s
or server errors reported with `failed`, with no success answered since they
were sent: a 429 storm or an outage) starts
at most one call per ``probe_interval`` (1 s): the others wait in the queue,
which is not attempt time. Failures while failing do not lower the rate again;
the first success ends it, ends the pause and restores the rate that held
before the storm's first 429s at once.

Waiting spins nowhere: callers queue in lanes (`legion.llm.lanes`): by their
task's priority, higher first with a guaranteed share (``lower_share``, 10 %) of
the starts for a lower lane that waits; within a lane, tenants take turns; within
a tenant, earliest attempt first (the attempt's start order, so calls of tasks
further along go before the first calls of new ones; FIFO among calls outside an
attempt). Only the head of the queue waits
on the clock, sleeping exactly until its turn (woken early only when a freed
slot or a token refund lets it start sooner), then hands the head position to
the next caller. Time in the queue is reported to the attempt as waiting
(`legion.attempt.waiting`), so it does not count against the task's timeout.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import math
import random
from dataclasses import dataclass
from types import TracebackType

from legion import attempt
from legion.llm.lanes import Lanes
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
    found_rpm: float | None = None
    """The request rate found without being told (``discover``), if any."""
    failing: bool = False
    """Whether the route is failing (a 429 storm, an outage): one probe per second."""
    limit_itpm: int | None = None
    """Configured input tokens per minute (``None``: none)."""
    limit_otpm: int | None = None
    """Configured output tokens per minute."""
    learned_itpm: int | None = None
    learned_otpm: int | None = None
    input_tokens_used: int = 0
    """Input tokens of settled calls as the limit counts them (cache reads exempt)."""
    output_tokens_used: int = 0


class _Blocker(enum.Enum):
    """What the head of the queue waits for."""

    TIME = "time"  # its start time under the pace or a pause: nothing can bring it closer
    TOKENS = "tokens"  # token refill; a refund can bring it closer
    SLOTS = "slots"  # a call in flight to end


class Slot:
    """A reserved call: settle it with the real token usage once known."""

    __slots__ = ("_capacity", "estimated_split", "estimated_tokens", "settled", "started_at")

    def __init__(
        self,
        capacity: Capacity,
        estimated_tokens: int,
        started_at: float,
        split: tuple[int, int] = (0, 0),
    ) -> None:
        self._capacity = capacity
        self.estimated_tokens = estimated_tokens
        self.estimated_split = split
        """The estimate's input and output tokens, reserved against ``itpm``/``otpm``."""
        self.started_at = started_at
        """When the call started, on the capacity's timer."""
        self.settled = False

    def settle(
        self,
        actual_tokens: int,
        *,
        refund: bool = True,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Record the call's real token usage: a success.

        The difference with the estimate is refunded (or charged) to the
        token budget, and the effective rate grows (additive increase).
        ``refund=False``: charge more when the call used more, but refund
        nothing when it used less, for a provider that counts the whole
        reservation (prompt and ``max_tokens``) against its limit.

        ``input_tokens`` (as the ``itpm`` limit counts them: cache reads left out where
        the provider exempts them) and ``output_tokens`` settle those buckets; ``None``
        keeps the estimate charged.
        """
        if self.settled:
            raise RuntimeError("this slot is already settled")
        self.settled = True
        self._capacity._settle(self, actual_tokens, refund, input_tokens, output_tokens)

    def refund(self) -> None:
        """The provider refused the call before it ran it (a request too large, a bad
        one): it counted none of its tokens, so none are charged here either. The estimate
        goes back to the token buckets, and nothing else changes (no success: the rate is
        left as it is). A request larger than a whole minute of the limit overdrew the
        bucket, and held every other caller of the route for as long as that lasted."""
        if self.settled:
            raise RuntimeError("this slot is already settled")
        self.settled = True
        self._capacity._refund(self)


class _Reservation:
    __slots__ = ("_capacity", "_slot", "_split", "_tokens")

    def __init__(self, capacity: Capacity, tokens: int, split: tuple[int, int]) -> None:
        self._capacity = capacity
        self._tokens = tokens
        self._split = split
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        self._slot = await self._capacity._acquire(self._tokens, self._split)
        return self._slot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._capacity._release()


class _Bucket:
    """One more token limit (input or output tokens per minute) and its bucket."""

    __slots__ = ("cap", "learned", "level", "limit", "rate", "refilled_at")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.learned: int | None = None
        self.level: float | None = None  # None: full
        self.refilled_at = 0.0
        # Tokens per second refilled, and the most it holds (see `Capacity._rerate`).
        self.rate: float | None = None
        self.cap = 0.0

    def base(self, share: float) -> float | None:
        limit = self.learned if self.learned is not None else self.limit
        return None if limit is None else limit * share


class TurnedAway(Exception):
    """Raised in the calls waiting for their turn on a route that `Capacity.turn_away`
    sent elsewhere (the route went out and the caller has another to go to)."""


class _Waiter:
    __slots__ = ("away", "key", "priority", "tenant", "tokens", "turn")

    def __init__(
        self,
        tokens: int,
        turn: asyncio.Future[None],
        key: tuple[float, int],
        priority: int = 0,
        tenant: str = "default",
    ) -> None:
        self.tokens = tokens
        self.turn = turn
        """Resolved when this waiter becomes the head of the queue."""
        self.key = key
        """Its place in its tenant's queue: the attempt's start order, then arrival."""
        self.priority = priority
        """Its lane: the task's priority."""
        self.tenant = tenant
        self.away = False
        """Turned away (`Capacity.turn_away`): out of the queue already."""

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


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
        default_pause: float = 0.5,
        pause_jitter: float = 0.1,
        discover: bool = False,
        start_rate: float = 8.0,
        growth_period: float = 0.5,
        discover_decrease: float = 0.9,
        discover_growth: float = 0.1,
        probe_interval: float = 1.0,
        failing_after: int = 3,
        lower_share: float = 0.1,
        itpm: int | None = None,
        otpm: int | None = None,
        cache_exempt: bool = False,
    ) -> None:
        for label, limit in (
            ("rpm", rpm),
            ("tpm", tpm),
            ("itpm", itpm),
            ("otpm", otpm),
            ("max_in_flight", max_in_flight),
        ):
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
        # How far ahead of the schedule a start may be, in seconds: the burst allowance.
        # Pacing at ``1 - burst`` of the limit leaves ``burst`` of every window unused.
        # Half of it lets a start that woke late catch up with the schedule; the other
        # half absorbs the jitter between a start here and its admission by the
        # provider. Either way no window of ``window`` seconds holds more starts than
        # the limit allows, at any rate.
        self._tolerance = burst * window / 2.0
        self._decrease = decrease
        self._first_decrease = first_decrease
        self._drop = 1.0 - decrease  # what the last decrease took, as a share of the rate
        self._recovery = recovery
        self._min_factor = min_factor
        self._default_pause = default_pause
        self._pause_jitter = pause_jitter

        self._discover = discover and rpm is None and tpm is None and itpm is None and otpm is None
        self._input = _Bucket(itpm)
        self._output = _Bucket(otpm)
        self._cache_exempt = cache_exempt
        self._input_used = 0
        self._output_used = 0
        self._found_rpm: float | None = start_rate * 60.0 if self._discover else None
        self._slow_start = self._discover
        self._grown_at = -math.inf
        self._grown_requests = 0  # (requests started by then: see `_take`)
        self._growth_period = growth_period
        self._discover_decrease = discover_decrease
        self._discover_growth = discover_growth
        self._probe_interval = probe_interval
        self._failing_after = failing_after
        self._failures = 0  # answers in a row that failed with no success since they were sent
        self._failing_since = -math.inf
        self._probe_at = -math.inf  # while failing: when the next probe may start
        self._succeeded_at = -math.inf  # when the last success was answered
        # The factor at the last success of a call sent after the last decrease: what a
        # route comes back to after a storm (whose first 429s lowered it).
        self._healthy = 1.0
        self._learned_rpm: int | None = None
        self._learned_tpm: int | None = None
        self._share = 1.0  # this process's part of limits shared with other workers
        self._factor = 1.0
        self._interval: float | None = None
        self._token_rate: float | None = None
        self._bucket_size = 0.0
        self._limited: tuple[tuple[_Bucket, int], ...] = ()
        self._rerate()
        self._decreased_at = -math.inf
        self._paused_until = -math.inf
        self._tat = -math.inf  # theoretical arrival time of the next request (GCRA)
        self._level: float | None = None  # token bucket level; None: full
        self._refilled_at = 0.0
        self._in_flight = 0
        self._head: _Waiter | None = None  # the caller whose turn it is
        # The others, by priority lane and tenant.
        self._waiters: Lanes[_Waiter] = Lanes(lower_share)
        self._lower_share = lower_share
        self._arrivals = itertools.count()
        self._kick: asyncio.Future[None] | None = None
        self._evictions = 0  # turn_away's count: a waiter that sees it change leaves
        self._blocker = _Blocker.TIME
        self._requests = 0
        self._rate_limited = 0
        self._tokens_used = 0

    # -- the public interface ---------------------------------------------------

    def reserve(
        self,
        estimated_tokens: int,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> _Reservation:
        """Wait for a turn to start a call estimated at ``estimated_tokens``
        tokens (``async with``); the call is in flight until the block ends.
        ``input_tokens`` and ``output_tokens`` split the estimate for the ``itpm`` and
        ``otpm`` limits (by default: all of it input, no output)."""
        return _Reservation(
            self, estimated_tokens, _split(estimated_tokens, input_tokens, output_tokens)
        )

    async def acquire(
        self,
        estimated_tokens: int,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> Slot:
        """`reserve` without a context manager (one object fewer held by each call in
        flight): wait for a turn, and call `release` once the call is over, whatever its
        end."""
        return await self._acquire(
            estimated_tokens, _split(estimated_tokens, input_tokens, output_tokens)
        )

    def release(self) -> None:
        """A call that `acquire` started is over (answered, failed or cancelled)."""
        self._release()

    def turn_away(self) -> None:
        """Every call waiting for its turn now raises `TurnedAway` (those that come later
        wait as usual): the route has gone out (failing, paused) and its callers have
        another route to go to, where they would otherwise wait here for its probes."""
        self._evictions += 1
        for waiter in self._waiters.take_all():
            waiter.away = True
            if not waiter.turn.done():  # (not cancelled meanwhile)
                waiter.turn.set_exception(TurnedAway())
        kick = self._kick
        if kick is not None and not kick.done():
            kick.set_result(None)  # the head, dozing: it sees the eviction and leaves

    @property
    def cache_exempt(self) -> bool:
        """Whether prompt tokens read from the provider's cache are left out of ``itpm``."""
        return self._cache_exempt

    def observe(self, info: RateLimitInfo, *, sent_at: float | None = None) -> None:
        """Learn from the rate-limit headers of an answer to a call started at
        ``sent_at`` on the timer (``None``: now).

        ``remaining`` counts describe the provider's window when it admitted the call,
        a whole call's latency ago: they allow at most that many starts from then on
        (the starts made since are already on the schedule) and that many tokens plus
        what has been refilled since. Read as if they described the window now, a
        full window seen half a second ago would hold back starts that fit today.
        """
        # A provider tells its limits with every answer: the pace is worked out again
        # only when one of them is new.
        learned = (
            self._learned_rpm,
            self._learned_tpm,
            self._input.learned,
            self._output.learned,
        )
        if info.limit_requests:
            self._learned_rpm = _undercut(info.limit_requests, self._rpm)
        if info.limit_tokens:
            self._learned_tpm = _undercut(info.limit_tokens, self._tpm)
        if info.limit_input_tokens:
            self._input.learned = _undercut(info.limit_input_tokens, self._input.limit)
        if info.limit_output_tokens:
            self._output.learned = _undercut(info.limit_output_tokens, self._output.limit)
        if learned != (
            self._learned_rpm,
            self._learned_tpm,
            self._input.learned,
            self._output.learned,
        ):
            self._rerate()
        now = self._timer.now()
        since = now if sent_at is None else min(now, sent_at)
        interval = self._interval
        if info.remaining_requests is not None and interval is not None:
            # Leave at most `remaining` starts allowed from `since` on.
            floor = since + self._tolerance - (info.remaining_requests - 1) * interval
            self._tat = max(self._tat, floor)
        rate = self._token_rate
        if info.remaining_tokens is not None and rate is not None:
            self._refill(now)
            level = self._level if self._level is not None else self._bucket_size
            self._level = min(level, info.remaining_tokens + (now - since) * rate)
        for bucket, place in self._limited:
            remaining = (info.remaining_input_tokens, info.remaining_output_tokens)[place]
            bucket_rate = bucket.rate
            if remaining is not None and bucket_rate is not None:
                self._bucket_refill(bucket, now)
                level = bucket.level if bucket.level is not None else bucket.cap
                bucket.level = min(level, remaining + (now - since) * bucket_rate)

    def set_share(self, share: float) -> None:
        """Pace at ``share`` (a fraction in (0, 1]) of the limits: this process's part of
        a budget that other workers using the same API key spend too."""
        self._share = min(1.0, max(0.001, share))
        self._rerate()

    @property
    def share(self) -> float:
        return self._share

    def demand(self) -> tuple[int, int]:
        """Calls started so far and calls in flight or waiting now: what a process
        claims when it shares the limits with other workers."""
        return self._requests, self._in_flight + self._queued()

    def _queued(self) -> int:
        return len(self._waiters) + (self._head is not None)

    @property
    def failing(self) -> bool:
        """Whether the route is failing: calls start one per ``probe_interval``."""
        return self._failures >= self._failing_after

    def request_rate(self) -> float | None:
        """Requests per second allowed now (``None``: no request limit, none found)."""
        interval = self._interval
        if self.failing:
            return 1.0 / self._probe_interval
        return None if interval is None else 1.0 / interval

    def headroom(self, horizon: float, priority: int | None = None) -> float:
        """How many more calls may queue here and still start within ``horizon``
        seconds at the rate allowed now (``inf`` without a request limit): what a
        worker may admit, by Little's law, before its instances only wait.
        ``priority``: for calls of that priority, which go ahead of the lower lanes'
        (only the calls queued at that priority or higher count, and the lower lanes
        keep their guaranteed share of the starts)."""
        rate = self.request_rate()
        if rate is None:
            return math.inf
        if priority is None:
            return rate * horizon - self._queued()
        head = self._head
        ahead = self._waiters.at_least(priority) + (head is not None and head.priority >= priority)
        return rate * (1.0 - self._lower_share) * horizon - ahead

    def paused_for(self) -> float:
        """Seconds until a 429 pause ends (0: not paused)."""
        return max(0.0, self._paused_until - self._timer.now())

    def expected_wait(self, tokens: int) -> float:
        """About how many seconds a call of ``tokens`` queued now would wait to start:
        behind the callers already queued, at the pace allowed now (what a pool compares
        to send a call where it starts soonest). Ties (routes without limits) are broken
        by the calls queued and in flight."""
        now = self._timer.now()
        queued = self._queued()
        wait = max(0.0, self._paused_until - now)
        interval = self._interval
        if self.failing:
            interval = self._probe_interval
        if interval is not None:
            wait = max(wait, self._tat - self._tolerance - now) + queued * interval
        rate = self._token_rate
        if rate is not None:
            self._refill(now)
            level = self._level if self._level is not None else self._bucket_size
            wait = max(wait, ((queued + 1) * tokens - level) / rate)
        if self._max_in_flight is not None and self._in_flight >= self._max_in_flight:
            wait += 1e-3 * (1 + queued)
        return wait + 1e-9 * (queued + self._in_flight)

    def spacing(self, tokens: int) -> float:
        """About how many seconds one more call of ``tokens`` queued now would add to the
        wait of the calls behind it, at the pace allowed now (0 without limits): what a
        gateway spaces the callers it turns away by, so that they come back in turn."""
        spacing = (self._probe_interval if self.failing else self._interval) or 0.0
        rate = self._token_rate
        if rate is not None:
            spacing = max(spacing, tokens / rate)
        return spacing

    def failed(self, *, sent_at: float) -> bool:
        """A call started at ``sent_at`` failed in a way that may pass (a server error, a
        timeout); answer whether the route was already failing as a whole (``failing``:
        failures in a row, none of them followed by a success), so that retrying this
        call must not count against its budget."""
        return self._note_failure(sent_at)

    def _note_failure(self, sent_at: float) -> bool:
        if self._succeeded_at > sent_at:
            return False  # others got through meanwhile: this call's own failure
        was_failing = self.failing
        self._failures += 1
        if self.failing and not was_failing:
            self._failing_since = self._timer.now()
            self._probe_at = self._failing_since + self._probe_interval
        return was_failing

    def probe_due(self) -> bool:
        """Whether the route is failing and its next probe may start now (none is in
        flight): a pool or a fallback that sends its calls elsewhere meanwhile sends it
        that one, or it would never be found to have come back."""
        return self.failing and self._in_flight == 0 and self._timer.now() >= self._probe_at

    def failing_for(self) -> float:
        """Seconds the route has been failing (0: it is not)."""
        return self._timer.now() - self._failing_since if self.failing else 0.0

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
        if sent_at is not None and not relayed:
            self._note_failure(sent_at)
        if self.failing:
            fresh = False  # a storm says nothing about the rate: keep it for afterwards
        if fresh and self._found_rpm is not None and self._learned_rpm is None:
            # The rate found so far overshot: halve it in slow start, else step down.
            cut = 0.5 if self._slow_start else self._discover_decrease
            self._slow_start = False
            self._found_rpm = max(6.0, self._found_rpm * cut)
            self._decreased_at = now
            self._rerate()
        elif fresh:
            # A first 429 after a quiet spell is most likely stray (the provider's window
            # and ours a few milliseconds out of step); another one soon after means the
            # limit really is lower than the rate.
            isolated = now - self._decreased_at > 3.0 * self._recovery
            decrease = self._first_decrease if isolated else self._decrease
            self._factor = max(self._min_factor, self._factor * decrease)
            self._drop = 1.0 - decrease
            self._decreased_at = now
            self._rerate()
        default = self._default_pause
        if self._found_rpm is not None and self._learned_rpm is None and not self.failing:
            default = min(default, 0.1)  # finding the limit: the lower rate is the answer
        pause = default if retry_after is None else max(0.0, retry_after)
        until = now + pause * (1.0 + self._pause_jitter * self._rng.random())
        if until > self._paused_until:
            self._paused_until = until
        interval = self._interval
        if interval is not None:  # resume at the pace, without a burst
            self._tat = max(self._tat, self._paused_until + self._tolerance)

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
            waiting=self._queued(),
            requests=self._requests,
            rate_limited=self._rate_limited,
            tokens_used=self._tokens_used,
            paused_for=max(0.0, self._paused_until - self._timer.now()),
            found_rpm=self._found_rpm if self._learned_rpm is None else None,
            failing=self.failing,
            limit_itpm=self._input.limit,
            limit_otpm=self._output.limit,
            learned_itpm=self._input.learned,
            learned_otpm=self._output.learned,
            input_tokens_used=self._input_used,
            output_tokens_used=self._output_used,
        )

    # -- limits -----------------------------------------------------------------

    def _base_rpm(self) -> float | None:
        rpm: float | None = self._learned_rpm if self._learned_rpm is not None else self._rpm
        if rpm is None:
            rpm = self._found_rpm
        return None if rpm is None else rpm * self._share

    def _base_tpm(self) -> float | None:
        tpm = self._learned_tpm if self._learned_tpm is not None else self._tpm
        return None if tpm is None else tpm * self._share

    def _rerate(self) -> None:
        """Work out the pace that the limits (configured, learned or found), this process's
        share of them and the rate factor allow, once for each change of any of them
        (most calls change none): what a call's schedule, start and settling read.

        - ``_interval``: seconds between two paced request starts (``None``: no request
          limit);
        - ``_token_rate``: tokens refilled per second (``None``: no token limit), into a
          bucket of ``_bucket_size`` tokens;
        - each input and output bucket's ``rate`` and ``cap`` alike, and ``_limited``:
          those of the two with a limit, each with its place in a call's split.
        """
        pace = self._factor * (1.0 - self._burst)
        burst = self._factor * self._burst * self._window / 60.0
        rpm = self._base_rpm()
        self._interval = None if rpm is None else 60.0 / (rpm * pace)
        tpm = self._base_tpm()
        self._token_rate = None if tpm is None else tpm * pace / 60.0
        self._bucket_size = 0.0 if tpm is None else max(1.0, tpm * burst)
        for bucket in (self._input, self._output):
            base = bucket.base(self._share)
            bucket.rate = None if base is None else base * pace / 60.0
            bucket.cap = 0.0 if base is None else max(1.0, base * burst)
        self._limited = tuple(
            (bucket, place)
            for place, bucket in enumerate((self._input, self._output))
            if bucket.rate is not None
        )

    def _bucket_refill(self, bucket: _Bucket, now: float) -> None:
        rate = bucket.rate
        if rate is not None and bucket.level is not None:
            # Refills stop at the cap; refunds may leave the level above it (see _settle).
            cap = max(bucket.cap, bucket.level)
            bucket.level = min(cap, bucket.level + max(0.0, now - bucket.refilled_at) * rate)
        bucket.refilled_at = now

    def _refill(self, now: float) -> None:
        rate = self._token_rate
        if rate is not None and self._level is not None:
            self._level = min(
                self._bucket_size, self._level + max(0.0, now - self._refilled_at) * rate
            )
        self._refilled_at = now

    # -- waiting for a turn -----------------------------------------------------

    def _delay(self, tokens: int, split: tuple[int, int] = (0, 0)) -> tuple[float, _Blocker]:
        """How long the head must still wait to start a call of ``tokens`` (``split``:
        its input and output tokens)."""
        if self._max_in_flight is not None and self._in_flight >= self._max_in_flight:
            return math.inf, _Blocker.SLOTS
        now = self._timer.now()
        wait = self._paused_until - now
        if self.failing:
            wait = max(wait, self._probe_at - now)
        interval = self._interval
        if interval is not None:
            wait = max(wait, self._tat - self._tolerance - now)
        rate = self._token_rate
        if rate is not None:
            self._refill(now)
            size = self._bucket_size
            level = self._level if self._level is not None else size
            # Like the request schedule: a call waits for its tokens plus half of what is
            # left of the allowance, the other half being the margin for jitter.
            short = (size + min(float(tokens), size)) / 2.0 - level
            if short > 0 and short / rate > wait:
                return short / rate, _Blocker.TOKENS
        for bucket, place in self._limited:
            bucket_rate = bucket.rate
            if bucket_rate is None:
                continue
            self._bucket_refill(bucket, now)
            cap = bucket.cap
            level = bucket.level if bucket.level is not None else cap
            short = (cap + min(float(split[place]), cap)) / 2.0 - level
            if short > 0 and short / bucket_rate > wait:
                return short / bucket_rate, _Blocker.TOKENS
        return max(0.0, wait), _Blocker.TIME

    async def _acquire(self, tokens: int, split: tuple[int, int] = (0, 0)) -> Slot:
        if self._head is None and not self._waiters and self._delay(tokens, split)[0] <= _EPSILON:
            return self._take(tokens, split)
        current = attempt.current()
        waiter = _Waiter(
            tokens,
            asyncio.get_running_loop().create_future(),
            (float(current.order) if current is not None else math.inf, next(self._arrivals)),
            current.priority if current is not None else 0,
            current.tenant if current is not None else "default",
        )
        if self._head is None:
            self._head = waiter
            waiter.turn.set_result(None)
        else:
            self._waiters.push(waiter)
        evictions = self._evictions
        try:
            with attempt.waiting(self._wait_reason()):
                await waiter.turn
                while True:
                    if self._evictions != evictions:
                        raise TurnedAway
                    delay, blocker = self._delay(tokens, split)
                    if delay <= _EPSILON:  # rounding must not leave a sleep of 1e-17 s
                        return self._take(tokens, split)
                    await self._doze(delay, blocker)
        finally:
            self._leave(waiter)

    def _wait_reason(self) -> str:
        rpm = self._base_rpm()
        limit = f" ({rpm * self._factor:.0f} rpm)" if rpm is not None else ""
        state = ", failing" if self.failing else ""
        return f"capacity on route {self.name or '?'}{limit}{state}"

    async def _doze(self, delay: float, blocker: _Blocker) -> None:
        """Sleep ``delay`` seconds, or until kicked when ``blocker`` can end sooner."""
        if blocker is _Blocker.TIME and not self.failing:
            await self._timer.sleep(delay)
            return
        # (While the route fails, the head waits for the next probe: a probe that gets
        # through wakes it at once.)
        kick: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._kick, self._blocker = kick, blocker
        try:
            if blocker is _Blocker.SLOTS:
                await kick
            else:
                # (the capacity's task, not the calling agent's: see LLMClient._turn_within)
                sleeper = asyncio.Task(self._timer.sleep(delay), name="llm-capacity-wait")
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
        if self._head is waiter:
            head = self._waiters.pop()
            self._head = head
            if head is not None and not head.turn.done():
                head.turn.set_result(None)
        elif not waiter.away:
            self._waiters.remove(waiter)

    # -- starting, settling and ending calls --------------------------------------

    def _take(self, tokens: int, split: tuple[int, int] = (0, 0)) -> Slot:
        now = self._timer.now()
        self._in_flight += 1
        self._requests += 1
        if self.failing:
            self._probe_at = now + self._probe_interval
        elif (
            self._slow_start
            and self._found_rpm is not None
            and self._waiters
            and now - self._grown_at >= self._growth_period
        ):
            # Callers queue at the rate found so far: double it once per growth period,
            # if the calls started since used half of it at least. Callers that queue
            # for something else (a token limit) grew it without end: 1.8e56 rpm after
            # 300 calls behind a token-limited route, ~180 429s to halve it back.
            if self._grown_at > -math.inf:
                used = (self._requests - self._grown_requests) * 60.0 / (now - self._grown_at)
                if used >= self._found_rpm / 2.0:
                    self._found_rpm *= 2.0
                    self._rerate()
            self._grown_at = now
            self._grown_requests = self._requests
        interval = self._interval
        if interval is not None:
            self._tat = max(self._tat, now) + interval
        if self._token_rate is not None:
            level = self._level if self._level is not None else self._bucket_size
            self._level = level - tokens
        for bucket, place in self._limited:
            self._bucket_refill(bucket, now)
            level = bucket.level if bucket.level is not None else bucket.cap
            bucket.level = level - split[place]
        return Slot(self, tokens, now, split)

    def _refund(self, slot: Slot) -> None:
        now = self._timer.now()
        for bucket, place in self._limited:
            reserved = slot.estimated_split[place]
            if bucket.level is not None and reserved:
                self._bucket_refill(bucket, now)
                bucket.level = min(max(bucket.cap, bucket.level), bucket.level + reserved)
        if self._token_rate is not None and self._level is not None:
            self._refill(now)
            self._level = min(self._bucket_size, self._level + slot.estimated_tokens)
        self._wake(_Blocker.TOKENS)

    def _settle(
        self,
        slot: Slot,
        actual_tokens: int,
        refund: bool,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        self._tokens_used += actual_tokens
        if input_tokens is not None:
            self._input_used += input_tokens
        if output_tokens is not None:
            self._output_used += output_tokens
        refunded = False
        for bucket, place in self._limited:
            actual = (input_tokens, output_tokens)[place]
            if actual is None:
                continue
            reserved = slot.estimated_split[place]
            if bucket.level is not None:
                self._bucket_refill(bucket, self._timer.now())
                # A refund is not clipped at the cap: the tokens were reserved within the
                # rate and not used (a call's output below its max_tokens), as if the call
                # had reserved only what it used. A charge beyond the estimate is taken.
                # (At most one call's refund above the cap: no burst of saved-up refunds.)
                ceiling = max(bucket.cap + reserved - actual, bucket.level)
                bucket.level = min(ceiling, bucket.level + reserved - actual)
                refunded = refunded or actual < reserved
        if refunded:
            self._wake(_Blocker.TOKENS)
        self._succeeded_at = self._timer.now()
        if self._failures:
            if self.failing:  # the probe got through: back to the rate before the storm
                # (A rate found by probing keeps its last step down: the storm may have
                # begun as that rate's overshoot.)
                self._factor = self._healthy
                self._rerate()
                self._tat = min(self._tat, self._succeeded_at + self._tolerance)
                self._paused_until = min(self._paused_until, self._succeeded_at)
                self._failures = 0
                self._wake(_Blocker.TIME)
            self._failures = 0
        charged = actual_tokens if refund else max(actual_tokens, slot.estimated_tokens)
        if self._token_rate is not None and self._level is not None:
            self._refill(self._timer.now())
            self._level = min(self._bucket_size, self._level + slot.estimated_tokens - charged)
            if charged < slot.estimated_tokens:
                self._wake(_Blocker.TOKENS)
        if slot.started_at <= self._decreased_at:
            return  # news from before the last decrease
        self._healthy = self._factor
        if self._found_rpm is not None and self._learned_rpm is None and not self._slow_start:
            # Additive increase of the rate found: `discover_growth` of it per second.
            self._found_rpm += 60.0 * self._discover_growth
            self._rerate()
        if self._factor >= 1.0:
            return  # at the full rate: nothing to restore
        rpm, tpm = self._base_rpm(), self._base_tpm()
        # The calls (tokens) of `recovery` seconds at the full rate restore what one
        # decrease took.
        if rpm is not None:
            share = 60.0 / (rpm * self._recovery)
        elif tpm is not None:
            share = 60.0 * actual_tokens / (tpm * self._recovery)
        elif (otpm := self._output.base(self._share)) is not None:
            share = 60.0 * (output_tokens or 0) / (otpm * self._recovery)
        elif (itpm := self._input.base(self._share)) is not None:
            share = 60.0 * (input_tokens or 0) / (itpm * self._recovery)
        else:
            return
        self._factor = min(1.0, self._factor + self._drop * share)
        self._rerate()

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake(_Blocker.SLOTS)


def _split(estimated: int, input_tokens: int | None, output_tokens: int | None) -> tuple[int, int]:
    """A call's estimate as the input and output tokens the ``itpm`` and ``otpm`` limits
    count (by default: all of it input, no output)."""
    if estimated < 0:
        raise ValueError("estimated_tokens must be >= 0")
    return (
        estimated if input_tokens is None else max(0, input_tokens),
        0 if output_tokens is None else max(0, output_tokens),
    )


def _undercut(advertised: int, configured: int | None) -> int | None:
    """The limit learned from a header: the advertised one where it is lower
    than the configured one (or none is configured), else none."""
    if configured is None or advertised < configured:
        return advertised
    return None
