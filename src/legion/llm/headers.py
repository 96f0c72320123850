"""Reading providers' rate-limit headers into a `RateLimitInfo`.

Understood:

* OpenAI (and vLLM, most OpenAI-compatible hosts, the simulator):
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets in Go
  duration syntax (``"1s"``, ``"6m0s"``, ``"120ms"``, ``"1.5s"``).
* Anthropic: ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``,
  resets as RFC 3339 instants (``"2025-01-01T12:00:30Z"``); when the combined
  ``tokens`` headers are absent, the ``input-tokens`` ones are used. The
  ``anthropic-ratelimit-{input,output}-tokens-{limit,remaining}`` headers are also
  read into their own fields (separate input and output limits).
* ``retry-after-ms`` (milliseconds, preferred when present) and
  ``Retry-After`` (seconds, or an HTTP date).

A header that is missing or unreadable is ``None`` in the result: headers
inform the limiter, they never fail a call.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict, CIMultiDictProxy

from legion.llm.types import RateLimitInfo

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, now: float | None = None
) -> RateLimitInfo:
    """The rate-limit state described by ``headers`` (any case), read at
    ``now`` (Unix seconds; the current time by default) for the headers that
    give instants rather than durations."""
    if not isinstance(headers, (CIMultiDict, CIMultiDictProxy)):
        headers = {name.lower(): value for name, value in headers.items()}
    wall = time.time() if now is None else now
    retry_after = parse_retry_after(headers, now=wall)
    if "x-ratelimit-limit-requests" in headers or "x-ratelimit-limit-tokens" in headers:
        return RateLimitInfo(
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
            reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
            remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
            retry_after=retry_after,
        )
    tokens = "anthropic-ratelimit-tokens"
    if f"{tokens}-limit" not in headers:
        tokens = "anthropic-ratelimit-input-tokens"
    return RateLimitInfo(
        limit_requests=_int(headers.get("anthropic-ratelimit-requests-limit")),
        remaining_requests=_int(headers.get("anthropic-ratelimit-requests-remaining")),
        reset_requests=_until(headers.get("anthropic-ratelimit-requests-reset"), wall),
        limit_tokens=_int(headers.get(f"{tokens}-limit")),
        remaining_tokens=_int(headers.get(f"{tokens}-remaining")),
        reset_tokens=_until(headers.get(f"{tokens}-reset"), wall),
        retry_after=retry_after,
        limit_input_tokens=_int(headers.get("anthropic-ratelimit-input-tokens-limit")),
        remaining_input_tokens=_int(headers.get("anthropic-ratelimit-input-tokens-remaining")),
        limit_output_tokens=_int(headers.get("anthropic-ratelimit-output-tokens-limit")),
        remaining_output_tokens=_int(headers.get("anthropic-ratelimit-output-tokens-remaining")),
    )


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go duration (``"6m0s"``, ``"1.5s"``, ``"120ms"``) or a
    bare number of seconds; ``None`` if ``value`` is neither."""
    if value is None:
        return None
    text = value.strip()
    seconds = _float(text)
    if seconds is not None:
        return seconds
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match[1]) * _UNIT_SECONDS[match[2]]
        position = match.end()
    if position == 0 or position != len(text):
        return None
    return total


MAX_RETRY_AFTER = 86_400.0
"""The longest Retry-After taken as given (a day: a daily quota's reset). A longer one is
not credible, and would park its tasks for that long: it is taken as none (the route's
default pause)."""


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """The wait asked for by ``retry-after-ms`` or ``retry-after`` (lower-case
    or case-insensitive ``headers``), in seconds from ``now`` (Unix seconds);
    ``None`` when there is none, or none up to `MAX_RETRY_AFTER`."""
    wait = _retry_after(headers, now)
    return wait if wait is None or wait <= MAX_RETRY_AFTER else None


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    millis = _float(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _float(value)
    if seconds is not None:
        return seconds
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def _until(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` to an RFC 3339 instant (0 if it is past)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
