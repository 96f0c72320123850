"""`FleetRoutes`: the LLM routes of a fleet of workers, added up from their heartbeats: what
the dashboard, ``/v1/statistics`` and ``/metrics`` of a server with no LLM client of its
own (``legion serve --no-worker``) show of each provider's use, and ``legion status``'s
table of routes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from legion.llm.route_report import TOTALS, combine, is_report
from legion.store.types import WorkerInfo


class FleetRoutes:
    """The workers' LLM routes added up (their heartbeats' ``llm`` reports), for a server
    with no client of its own. A worker that leaves (stopped, restarted under a new id)
    leaves its running totals behind: the fleet's counters never go down, nor go
    missing, while the server runs (``/metrics`` exposes them as counters), also while no
    worker is up."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, Mapping[str, Any]]] = {}  # worker -> route -> report
        self._gone: dict[str, dict[str, Any]] = {}  # route -> totals of workers gone
        self._last_gone: dict[str, Mapping[str, Any]] = {}  # route -> a gone worker's report

    def reports(self, workers: Sequence[WorkerInfo], fresh_since: float) -> dict[str, Any]:
        """Each route's report over ``workers`` (the state now of those whose heartbeat
        is newer than ``fresh_since``; the totals of all, and of those gone)."""
        seen: dict[str, dict[str, Mapping[str, Any]]] = {}
        for w in workers:
            llm = w.load.get("llm")
            if isinstance(llm, dict):
                seen[w.id] = {
                    n: r for n, r in llm.items() if is_report(r)
                }  # (another version's shape: left out)
        for gone in self._last.keys() - seen.keys():
            for name, report in self._last[gone].items():
                totals = self._gone.setdefault(name, dict.fromkeys(TOTALS, 0))
                for total in TOTALS:
                    totals[total] += report.get(total) or 0
                self._last_gone[name] = report
        self._last = seen
        fresh = {w.id for w in workers if w.heartbeat_at >= fresh_since}
        by_route: dict[str, list[Mapping[str, Any]]] = {}
        for worker, routes in seen.items():
            for name, report in routes.items():
                if worker not in fresh:  # its totals count; its state now is not known
                    report = {**report, "in_flight": 0, "waiting": 0, "paused_for": 0.0}
                by_route.setdefault(name, []).append(report)
        out = {}
        for name, reports in by_route.items():
            combined = combine(reports)
            for total, value in self._gone.get(name, {}).items():
                combined[total] += value
            out[name] = combined
        for name in self._gone.keys() - out.keys():  # no worker has it now: its totals stay
            last = self._last_gone[name]
            out[name] = {**last, **_IDLE, **self._gone[name]}
        return out


_IDLE = {"in_flight": 0, "waiting": 0, "paused_for": 0.0, "breaker": 0}
"""The state now of a route no live worker has."""
