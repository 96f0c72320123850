"""What a worker reports of its LLM routes to the scaling policy (`RouteMeter`), on a fake
clock: a real client and capacity, a scripted provider that answers at once."""

from __future__ import annotations

import itertools
from typing import Any

from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.run.route_meter import MIN_SPAN, RouteMeter
from legion.testing import ScriptedProvider


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _client() -> LLMClient:
    return LLMClient(
        [Route("r", ScriptedProvider(itertools.repeat("ok")), "m", Capacity("r", rpm=600))]
    )


async def _calls(client: LLMClient, n: int) -> None:
    for _ in range(n):
        await client.chat([{"role": "user", "content": "hi"}], max_tokens=2)


def _only(report: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (route,) = report.values()
    return route


async def test_a_route_is_rated_from_its_first_calls_not_from_the_workers_start() -> None:
    client, clock = _client(), _Clock()
    meter = RouteMeter(client, clock=clock)
    clock.now += 2.0  # the worker starts up: imports, leases; no call yet
    assert _only(meter.report())["rpm"] == 0 and not meter.measured
    clock.now += 0.5
    await _calls(client, 3)
    first = _only(meter.report())  # its first calls: not rated yet
    assert first["rpm"] == 0 and not meter.measured
    clock.now += 1.0
    await _calls(client, 6)
    rated = _only(meter.report())
    # 6 calls in the second since the first report that saw calls: 360 a minute, not the
    # 9 calls over 3.5 s (154 a minute) counted from the worker's start.
    assert rated["rpm"] == 360.0 and rated["rpm_limit"] == 600 and meter.measured


async def test_a_worker_whose_routes_stay_unused_is_measured_after_a_window() -> None:
    client, clock = _client(), _Clock()
    meter = RouteMeter(client, window=5.0, clock=clock)
    clock.now += 4.9
    meter.report()
    assert not meter.measured  # its first calls may still come: the policy waits
    clock.now += 0.2
    assert _only(meter.report())["rpm"] == 0 and meter.measured


async def test_a_busy_route_is_measured_after_min_span_of_use() -> None:
    client, clock = _client(), _Clock()
    await _calls(client, 1)  # calls before the meter: counted from its start
    meter = RouteMeter(client, clock=clock)
    clock.now += MIN_SPAN / 2
    meter.report()
    assert not meter.measured
    clock.now += MIN_SPAN
    await _calls(client, 3)
    report = _only(meter.report())
    assert meter.measured and report["rpm"] == round(3 * 60 / (1.5 * MIN_SPAN), 1)


async def test_the_429s_of_the_window_are_reported() -> None:
    # A provider that sends no rate-limit headers, and no --rpm: the route's limit is
    # unknown, and its 429s are what says it is at it (the scaling policy holds then).
    client, clock = _client(), _Clock()
    meter = RouteMeter(client, window=5.0, clock=clock)
    await _calls(client, 2)
    meter.report()  # (its first calls: counted from here)
    capacity = client.routes["r"].capacity
    capacity.rate_limited(0.0)
    capacity.rate_limited(0.0)
    clock.now += 1.0
    assert _only(meter.report())["limited"] == 2
    clock.now += 5.0
    meter.report()
    clock.now += 1.0
    assert _only(meter.report())["limited"] == 0  # (out of the window)
