"""Rate-window arithmetic, driven by a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import math
import random

import pytest

from legion.sim.config import SimConfig, units_per_window
from legion.sim.limits import (
    FixedWindow,
    RateLimiter,
    SlidingWindow,
    format_reset,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-1.0, "0s"),
        (0.0, "0s"),
        (0.0001, "1ms"),
        (0.12, "120ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.727, "59.727s"),
        (60.0, "1m0s"),
        (61.25, "1m1.25s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
    ],
)
def test_format_reset_uses_openai_duration_syntax(seconds: float, expected: str) -> None:
    assert format_reset(seconds) == expected


def test_sliding_request_window_rejects_until_oldest_request_expires() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, rpm=3)
    remaining = []
    for _ in range(3):
        admission = limiter.admit(0)
        assert admission.allowed
        remaining.append(admission.remaining_requests)
        limiter.release()
        clock.advance(10)
    assert remaining == [2, 1, 0]

    rejected = limiter.admit(0)  # at t0 + 30
    assert not rejected.allowed
    assert rejected.reason == "requests"
    assert rejected.retry_after == pytest.approx(30.0)  # first request leaves at t0 + 60
    assert rejected.reset_requests == pytest.approx(50.0)  # last one leaves at t0 + 80
    assert rejected.remaining_requests == 0

    clock.advance(29.9)
    assert not limiter.admit(0).allowed
    clock.advance(0.1)
    assert limiter.admit(0).allowed


def test_sliding_token_window_charges_tokens_and_reports_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, tpm=100)
    first = limiter.admit(60)
    assert first.allowed
    assert first.remaining_tokens == 40
    assert first.remaining_requests is None and first.limit_requests is None

    clock.advance(15)
    rejected = limiter.admit(50)
    assert rejected.reason == "tokens"
    assert rejected.retry_after == pytest.approx(45.0)
    assert rejected.reset_tokens == pytest.approx(45.0)

    assert limiter.admit(40).allowed  # exactly fills the window
    assert limiter.admit(1).reason == "tokens"
    clock.advance(45)
    assert limiter.admit(50).allowed  # the first 60 tokens expired


def test_token_wait_frees_enough_entries_in_order() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, tpm=100)
    for _ in range(4):
        assert limiter.admit(25).allowed
        clock.advance(1)
    # 100 used; 60 more need three entries (25 + 25 + 25) to expire: the third
    # was consumed at t0 + 2.
    assert limiter.admit(60).retry_after == pytest.approx(2 + 60 - 4)


def test_request_larger_than_token_limit_is_never_admitted() -> None:
    limiter = RateLimiter(clock=FakeClock(), tpm=100)
    admission = limiter.admit(101)
    assert not admission.allowed
    assert admission.reason == "too_large"
    assert admission.retry_after is None
    headers = admission.headers()
    assert headers["x-should-retry"] == "false"
    assert "retry-after" not in headers
    assert admission.remaining_tokens == 100  # nothing consumed


def test_fixed_window_returns_all_capacity_at_the_boundary() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter(clock=clock, rpm=2, tpm=1000, window="fixed")
    assert limiter.admit(0).reset_requests == pytest.approx(60.0)
    clock.advance(50)
    assert limiter.admit(0).allowed
    rejected = limiter.admit(0)
    assert rejected.reason == "requests"
    assert rejected.retry_after == pytest.approx(10.0)
    assert rejected.reset_requests == pytest.approx(10.0)
    assert rejected.reset_tokens == 0.0  # no tokens used in this window

    clock.advance(10)
    assert limiter.admit(0).allowed  # new window at t0 + 60
    clock.advance(125)  # skips two whole windows: t0 + 185, window ends at t0 + 240
    admission = limiter.admit(0)
    assert admission.remaining_requests == 1
    assert admission.reset_requests == pytest.approx(55.0)


def test_concurrency_cap_uses_the_configured_retry_after() -> None:
    limiter = RateLimiter(clock=FakeClock(), max_concurrency=1, concurrency_retry_after=2.5)
    assert limiter.admit(10).allowed
    assert limiter.in_flight == 1
    rejected = limiter.admit(10)
    assert rejected.reason == "concurrency"
    assert rejected.retry_after == 2.5
    assert rejected.headers() == {"retry-after": "3", "retry-after-ms": "2500"}
    limiter.release()
    assert limiter.in_flight == 0
    assert limiter.admit(10).allowed


def test_rejected_requests_count_against_the_window_when_enabled() -> None:
    clock = FakeClock()
    counting = RateLimiter(clock=clock, rpm=2, rejected_count_against_limit=True)
    lenient = RateLimiter(clock=clock, rpm=2)
    for limiter in (counting, lenient):
        assert limiter.admit(0).allowed
        assert limiter.admit(0).allowed
    clock.advance(1)
    first = counting.admit(0)
    assert lenient.admit(0).retry_after == pytest.approx(59.0)
    assert first.retry_after == pytest.approx(59.0)
    clock.advance(58.5)
    # The rejection at t0 + 1 occupies the window until t0 + 61, and this
    # one until t0 + 119.5.
    assert counting.admit(0).retry_after == pytest.approx(1.5)
    clock.advance(0.5)
    assert lenient.admit(0).allowed
    late = counting.admit(0)
    assert not late.allowed
    # Counting itself, the window holds three rejections (t0 + 1, + 59.5,
    # + 60): two must leave before one more request fits.
    assert late.retry_after == pytest.approx(59.5)


def test_headers_of_admitted_and_rejected_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, rpm=2, tpm=1000)
    assert limiter.admit(100).headers() == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    assert limiter.admit(100).allowed
    clock.advance(59.75)
    headers = limiter.admit(100).headers()
    assert headers["retry-after"] == "1"  # whole seconds, rounded up
    assert headers["retry-after-ms"] == "250"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "250ms"


def test_no_limits_admit_everything_without_headers() -> None:
    limiter = RateLimiter(clock=FakeClock())
    for _ in range(1000):
        admission = limiter.admit(10**6)
        assert admission.allowed
    assert admission.headers() == {}
    assert limiter.in_flight == 1000


class _NaiveSliding:
    """The sliding window by definition: keep every entry, sum the live ones."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.entries: list[tuple[float, int]] = []

    def live(self, now: float) -> list[tuple[float, int]]:
        return [(t, n) for t, n in self.entries if t > now - self.window]

    def wait_time(self, amount: int, now: float) -> float:
        live = self.live(now)
        used = sum(n for _, n in live)
        if used + amount <= self.limit:
            return 0.0
        if amount > self.limit:
            return math.inf
        for t, n in live:
            used -= n
            if used + amount <= self.limit:
                return t + self.window - now
        raise AssertionError("unreachable")


def test_sliding_window_matches_its_definition_over_many_operations() -> None:
    rng = random.Random(5)
    window = SlidingWindow(limit=50, window=1.0)
    naive = _NaiveSliding(limit=50, window=1.0)
    now = 0.0
    for _ in range(12_000):  # enough expired entries to trigger compaction
        now += rng.choice((0.0, 0.002, 0.005, 0.02))
        amount = rng.randint(1, 8)
        expected_wait = naive.wait_time(amount, now)
        assert window.wait_time(amount, now) == pytest.approx(expected_wait)
        assert window.used(now) == sum(n for _, n in naive.live(now))
        if expected_wait == 0.0 or rng.random() < 0.1:  # sometimes over the limit
            window.consume(amount, now)
            naive.entries.append((now, amount))
    live = naive.live(now)
    expected_reset = live[-1][0] + 1.0 - now if live else 0.0
    assert window.reset_time(now) == pytest.approx(expected_reset)


def test_fixed_window_grid_is_anchored_at_its_origin() -> None:
    window = FixedWindow(limit=10, origin=100.0, window=60.0)
    window.consume(10, 100.0)
    assert window.wait_time(1, 159.0) == pytest.approx(1.0)
    assert window.wait_time(11, 159.0) == math.inf
    assert window.used(160.0) == 0
    window.consume(4, 170.0)
    assert window.reset_time(170.0) == pytest.approx(50.0)
    assert window.wait_time(6, 170.0) == 0.0


def test_a_per_minute_limit_can_be_enforced_per_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, rpm=120, window_seconds=1.0)  # 2 a second
    assert [limiter.admit(1).allowed for _ in range(3)] == [True, True, False]
    rejected = limiter.admit(1)
    assert rejected.retry_after == pytest.approx(1.0)
    assert rejected.limit_requests == 120  # headers still speak per minute
    assert rejected.remaining_requests == 0
    clock.advance(1.0)
    assert limiter.admit(1).allowed


@pytest.mark.parametrize(
    ("limit", "seconds", "message"),
    [
        (30, 1.0, "rpm 30 over windows of 1 s is 0.5 a window"),
        (90, 1.0, "give a rpm of 60 or 120"),
        (1_000, 1.0, "windows of at least 1.02 s"),
    ],
)
def test_a_limit_no_window_holds_whole_is_refused_not_rounded_up(
    limit: int, seconds: float, message: str
) -> None:
    """``--rpm 30 --window-seconds 1`` admitted 60 a minute and said 60 in its headers."""
    with pytest.raises(ValueError, match=message):
        SimConfig(rpm=limit, window_seconds=seconds)
    assert units_per_window(100_000, 1.0) == 1_666  # tokens: under 1 % lost to rounding
    assert units_per_window(20, 3.0) == 1
