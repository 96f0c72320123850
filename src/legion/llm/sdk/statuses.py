"""The HTTP status an SDK (or a gateway's caller) gets for a call legion could not make."""

from __future__ import annotations

from legion.errors import (
    BudgetExceeded,
    LegionError,
    Permanent,
    ProviderError,
    ProviderRejected,
    RateLimited,
)
from legion.llm.deltas import StreamInterrupted
from legion.llm.sdk.openai_wire import WireError


def error_status(exc: WireError | LegionError) -> int:
    """The HTTP status that says what ``exc`` says: 400 for a request legion cannot take
    or a permanent refusal, 429 for a rate limit legion's retries did not outlast or a
    budget that cannot hold the call (as a provider's ``insufficient_quota``), 502 or
    the provider's 5xx for a provider that failed (a stream it broke part-way included:
    not retried, but not the caller's fault), 500 for anything else."""
    if isinstance(exc, WireError):
        return 400
    if isinstance(exc, StreamInterrupted):
        return 502
    if isinstance(exc, (RateLimited, BudgetExceeded)):
        return 429
    if isinstance(exc, ProviderError):
        return exc.status if exc.status and exc.status >= 500 else 502
    if isinstance(exc, ProviderRejected):
        return exc.status or 400
    if isinstance(exc, Permanent):
        return 400
    return 500
