"""Reading rate-limit headers of OpenAI, Anthropic and HTTP's Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from legion.llm import RateLimitInfo, parse_rate_limit_headers
from legion.llm.headers import parse_duration, parse_retry_after

NOW = 1_750_000_000.0  # a fixed Unix time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("120ms", 0.12),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("250us", 0.00025),
        ("20", 20.0),
        ("0.25", 0.25),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "s", "1s2", "-1s", "1s 2m"])
def test_unreadable_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


def test_openai_headers_any_case() -> None:
    headers = {
        "X-RateLimit-Limit-Requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-tokens": "199000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_rate_limit_headers(headers, now=NOW) == RateLimitInfo(
        limit_requests=500,
        remaining_requests=499,
        reset_requests=0.12,
        limit_tokens=200_000,
        remaining_tokens=199_000,
        reset_tokens=360.0,
    )


def test_anthropic_headers_with_rfc3339_resets() -> None:
    headers = CIMultiDict(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": datetime.fromtimestamp(NOW + 12, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": "2025-01-01T00:00:00.500+00:00",
            "retry-after": "12",
        }
    )
    info = parse_rate_limit_headers(headers, now=NOW)
    assert (info.limit_requests, info.remaining_requests) == (50, 0)
    assert info.reset_requests == pytest.approx(12.0)
    # Without combined token headers, the input-token ones are used; a past reset is 0.
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens) == (40_000, 39_000, 0.0)
    assert info.retry_after == 12.0


def test_combined_anthropic_token_headers_win() -> None:
    info = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-tokens-limit": "90000",
            "anthropic-ratelimit-input-tokens-limit": "40000",
        },
        now=NOW,
    )
    assert info.limit_tokens == 90_000


def test_retry_after_ms_is_preferred_then_seconds_then_http_date() -> None:
    both = {"retry-after-ms": "1500", "retry-after": "2"}
    assert parse_rate_limit_headers(both, now=NOW).retry_after == 1.5
    assert parse_rate_limit_headers({"Retry-After": "2.5"}, now=NOW).retry_after == 2.5
    date = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    assert parse_rate_limit_headers({"Retry-After": date}, now=NOW).retry_after == 30.0


def test_garbage_headers_are_ignored() -> None:
    info = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-requests": "many",
            "x-ratelimit-remaining-requests": "-3",
            "x-ratelimit-reset-requests": "later",
            "retry-after": "Tuesday",
            "anthropic-ratelimit-requests-reset": "not a time",
        },
        now=NOW,
    )
    assert info == RateLimitInfo()
    assert parse_rate_limit_headers({}, now=NOW) == RateLimitInfo()


def test_a_retry_after_past_a_day_is_taken_as_none() -> None:
    # Retry-After: 99999999 parked its tasks for three years; 1e308 printed 309 digits.
    for value in ("99999999", "1e308", "86401", "Fri, 31 Dec 9999 23:59:59 GMT"):
        assert parse_retry_after({"retry-after": value}, now=0.0) is None, value
    assert parse_retry_after({"retry-after-ms": "90000000"}, now=0.0) is None
    assert parse_retry_after({"retry-after": "86400"}, now=0.0) == 86_400.0  # a daily quota
