"""A server without a worker of its own shows the workers' LLM routes added up from their
heartbeats (`legion.llm.fleet_routes.FleetRoutes`, `legion.llm.route_report`)."""

from __future__ import annotations

from typing import Any

from legion.llm.fleet_routes import FleetRoutes
from legion.llm.route_report import combine
from legion.store.types import WorkerInfo


def report(requests: int, **state: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": "m",
        "requests": requests,
        "tokens": 10 * requests,
        "failed": 0,
        "rate_limited": 1,
        "input_tokens": 8 * requests,
        "output_tokens": 2 * requests,
        "cost_usd": 0.5,
        "in_flight": 2,
        "max_in_flight": None,
        "waiting": 1,
        "rpm_limit": 600.0,
        "tpm_limit": None,
        "rpm_allowed": 300.0,
        "tpm_allowed": None,
        "paused_for": 0.0,
        "breaker": 0,
    } | state


def worker(wid: str, heartbeat: float, **routes: dict[str, Any]) -> WorkerInfo:
    return WorkerInfo(wid, "h", 1, 0.0, heartbeat, {"llm": routes})


def test_reports_are_added_up_over_workers() -> None:
    both = combine([report(10, breaker=2, paused_for=3.0), report(5, breaker=1)])
    assert (both["requests"], both["tokens"], both["rate_limited"]) == (15, 150, 2)
    assert (both["in_flight"], both["waiting"], both["rpm_allowed"]) == (4, 2, 600.0)
    assert (both["rpm_limit"], both["tpm_limit"], both["max_in_flight"]) == (600.0, None, None)
    assert both["paused_for"] == 3.0
    assert both["breaker"] == 1  # open is worse than half-open


def test_a_worker_that_leaves_keeps_its_totals_and_a_stale_one_its_state_out() -> None:
    fleet = FleetRoutes()
    now = 100.0
    seen = fleet.reports(
        [worker("a", now, default=report(10)), worker("b", now, default=report(5))], now - 5
    )
    assert seen["default"]["requests"] == 15 and seen["default"]["in_flight"] == 4
    # b leaves (stopped); a goes on: the fleet's counter does not go down
    seen = fleet.reports([worker("a", now, default=report(12))], now - 5)
    assert seen["default"]["requests"] == 17 and seen["default"]["in_flight"] == 2
    # a new worker c; a's heartbeat is stale: its totals count, its calls in flight not
    seen = fleet.reports(
        [worker("a", now - 60, default=report(12)), worker("c", now, default=report(1))], now - 5
    )
    assert seen["default"]["requests"] == 18
    assert (seen["default"]["in_flight"], seen["default"]["waiting"]) == (2, 1)


def test_a_route_no_live_worker_has_keeps_its_totals() -> None:
    # Once the only worker stopped, the route was gone from the reports (and its series
    # from /metrics) until another worker came.
    fleet = FleetRoutes()
    fleet.reports([worker("a", 100.0, default=report(4, breaker=1, paused_for=2.0))], 95.0)
    (seen,) = fleet.reports([], 95.0).values()
    assert (seen["requests"], seen["tokens"], seen["model"]) == (4, 40, "m")
    assert (seen["in_flight"], seen["waiting"], seen["paused_for"], seen["breaker"]) == (
        0, 0, 0.0, 0
    )  # fmt: skip
    again = fleet.reports([worker("b", 200.0, default=report(1))], 195.0)
    assert again["default"]["requests"] == 5


def test_a_report_of_another_shape_is_left_out() -> None:
    fleet = FleetRoutes()
    odd = {"requests": "many"}
    seen = fleet.reports([worker("a", 1.0, default=report(3), other=odd)], 0.0)
    assert list(seen) == ["default"]
    assert FleetRoutes().reports([WorkerInfo("old", "h", 1, 0.0, 1.0, {})], 0.0) == {}
