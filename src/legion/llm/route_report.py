"""One LLM route's counters as plain JSON: what a worker publishes in its heartbeat, and
what a server without a worker of its own (``legion serve --no-worker``) adds up over
the live workers to show the fleet's use of each provider (the dashboard, the
statistics, ``/metrics``).

A report holds running totals (``requests``, ``tokens``, ``rate_limited``...: `TOTALS`)
and the state now (calls in flight and waiting, limits, a pause, the breaker). `combine`
adds the reports of one route over several workers: totals and counts are summed, the
limit is the largest reported (one provider budget, learned or told alike), a pause
is the longest, and the breaker the worst.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from legion.llm.client import RouteStatistics

TOTALS = (
    "requests",
    "tokens",
    "failed",
    "rate_limited",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
"""The fields that only grow while a worker lives (summed over workers past and present)."""

_SUMMED = ("in_flight", "waiting", "rpm_allowed", "tpm_allowed", "max_in_flight")
_BREAKER_ORDER = (0, 2, 1)  # closed, half-open, open: the worst last


def route_report(r: RouteStatistics) -> dict[str, Any]:
    """``r`` as a report."""
    c = r.capacity
    return {
        "provider": r.provider,
        "model": r.model,
        "requests": c.requests,
        "tokens": c.tokens_used,
        "failed": r.failed,
        "rate_limited": c.rate_limited,
        "input_tokens": r.usage.prompt_tokens,
        "output_tokens": r.usage.completion_tokens,
        "cost_usd": r.cost_usd,
        "in_flight": c.in_flight,
        "max_in_flight": c.max_in_flight,
        "waiting": c.waiting,
        "rpm_limit": _limit(c.learned_rpm, c.limit_rpm),
        "tpm_limit": _limit(c.learned_tpm, c.limit_tpm),
        "rpm_allowed": c.effective_rpm,
        "tpm_allowed": c.effective_tpm,
        "paused_for": c.paused_for,
        "breaker": int(r.breaker.state) if r.breaker is not None else 0,
    }


_FIELDS = (
    "provider", "model", "in_flight", "max_in_flight", "waiting", "rpm_limit", "tpm_limit",
    "rpm_allowed", "tpm_allowed", "paused_for",
)  # fmt: skip


def is_report(report: Any) -> bool:
    """Whether ``report`` (from a heartbeat: a worker of another version may send another
    shape) has every field of `route_report`'s, its totals numbers and its breaker a
    state."""
    return (
        isinstance(report, dict)
        and all(isinstance(report.get(f), int | float) for f in TOTALS)
        and all(f in report for f in _FIELDS)
        and report.get("breaker") in _BREAKER_ORDER
    )


def combine(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One route's reports from several workers as one (see the module's text)."""
    out: dict[str, Any] = {}
    for report in reports:
        if not out:
            out = dict(report)
            continue
        for field in (*TOTALS, *_SUMMED):
            mine, theirs = out.get(field), report.get(field)
            out[field] = None if mine is None or theirs is None else mine + theirs
        for field in ("rpm_limit", "tpm_limit", "paused_for"):
            found = [v for v in (out.get(field), report.get(field)) if v is not None]
            out[field] = max(found) if found else None
        out["breaker"] = max(out.get("breaker", 0), report.get("breaker", 0), key=_worse)
    return out


def _worse(state: Any) -> int:
    return _BREAKER_ORDER.index(state) if state in _BREAKER_ORDER else 0


def _limit(learned: float | None, configured: float | None) -> float | None:
    value = learned if learned is not None else configured
    return float(value) if value else None
