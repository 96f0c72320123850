"""LLM limits shared by several workers through a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

from legion.llm import Capacity, LLMClient, Route
from legion.run.shares import SharedCapacity
from legion.store import Store
from legion.testing import FakeClock, ScriptedProvider


def worker_client(rpm: int, clock: FakeClock) -> tuple[LLMClient, Capacity]:
    capacity = Capacity("default", rpm=rpm, timer=clock)
    provider = ScriptedProvider([], name="openai")
    return LLMClient([Route("default", provider, "gpt-x", capacity)]), capacity


async def test_idle_workers_split_the_limit_evenly(store: Store) -> None:
    clock = FakeClock(wall=1000.0)
    pairs = [worker_client(600, clock) for _ in range(3)]
    shares = [
        SharedCapacity(client, store, f"w{i}", clock=clock) for i, (client, _) in enumerate(pairs)
    ]
    for _ in range(2):  # two rounds: everyone has seen everyone
        for s in shares:
            await s.sync()
    assert [round(c.share, 3) for _, c in pairs] == [0.333] * 3
    assert sum(c.statistics().effective_rpm or 0 for _, c in pairs) <= 600 + 1e-6


async def test_a_busy_worker_takes_most_of_the_limit_and_shares_add_up_to_one(store: Store) -> None:
    clock = FakeClock(wall=1000.0)
    (busy_client, busy), (idle_client, idle) = worker_client(600, clock), worker_client(600, clock)
    busy_share = SharedCapacity(busy_client, store, "busy", clock=clock)
    idle_share = SharedCapacity(idle_client, store, "idle", clock=clock)
    reservations = [busy.reserve(10) for _ in range(8)]
    # Eight calls in flight (paced at 600 rpm: the clock jumps to each one's turn).
    slots = [await clock.run(r.__aenter__()) for r in reservations]
    for _ in range(3):
        await busy_share.sync()
        await idle_share.sync()
    assert busy.share > 0.7 and idle.share < 0.3
    assert abs(busy.share + idle.share - 1.0) < 0.15
    for r, slot in zip(reservations, slots, strict=True):
        slot.settle(10)
        await r.__aexit__(None, None, None)


async def test_a_worker_that_stops_claiming_no_longer_counts(store: Store) -> None:
    clock = FakeClock(wall=1000.0)
    (a_client, a), (b_client, _) = worker_client(600, clock), worker_client(600, clock)
    sa = SharedCapacity(a_client, store, "a", clock=clock, period=1.0)
    sb = SharedCapacity(b_client, store, "b", clock=clock, period=1.0)
    await sb.sync()
    await sa.sync()
    assert round(a.share, 2) == 0.5
    await clock.advance(10)  # b died: its claim is older than three periods
    await sa.sync()
    assert a.share == 1.0


async def test_a_429_seen_by_one_worker_slows_the_others(store: Store) -> None:
    clock = FakeClock(wall=1000.0)
    (a_client, a), (b_client, b) = worker_client(600, clock), worker_client(600, clock)
    sa = SharedCapacity(a_client, store, "a", clock=clock)
    sb = SharedCapacity(b_client, store, "b", clock=clock)
    await sa.sync()
    await sb.sync()
    before = b.statistics().effective_rpm
    a.rate_limited(5.0)  # the provider told worker a to back off for 5 s
    await sa.sync()  # a publishes it
    await sb.sync()  # b reads it
    after = b.statistics()
    assert before is not None and after.effective_rpm is not None
    assert after.effective_rpm < before  # b slowed down too
    assert after.paused_for > 0  # and pauses
    assert after.rate_limited == 0  # it was not b's own 429
    await sb.sync()  # read again: applied once, not once per round
    assert b.statistics().effective_rpm == after.effective_rpm


async def test_a_gateway_whose_clock_is_ahead_claims_on_the_stores_clock(store: Store) -> None:
    # A gateway stamped its claims on its host's clock: 40 s ahead, its claim looked live
    # to every worker for 40 s after it stopped, and the fleet ran at half its limit.
    from legion.gateway.app import Gateway

    now = await store.now()
    ahead = FakeClock(wall=now + 40)
    gateway_client, _ = worker_client(600, ahead)
    gateway = Gateway(gateway_client, store, gateway_id="gw", clock=ahead)
    await gateway.sync_shares()  # one claim, then the gateway stops
    later = FakeClock(wall=now + 10)  # a worker, ten seconds on: the claim has lapsed
    client, capacity = worker_client(600, later)
    shares = SharedCapacity(client, store, "w", clock=later)
    await shares.sync()
    assert capacity.share == 1.0


def test_two_endpoints_of_one_model_have_two_budgets() -> None:
    # The endpoint was read from an attribute the providers did not have: two servers of
    # one model (two regions, two vLLM hosts) split one budget, at half their limits.
    from legion.llm import OpenAIProvider
    from legion.run.shares import _key

    def route(url: str) -> Route:
        return Route("r", OpenAIProvider(base_url=url, name="openai"), "m", Capacity("r"))

    a, b = route("http://10.0.0.1:8000/v1"), route("http://10.0.0.2:8000/v1")
    assert _key(a) != _key(b)
    assert _key(a) == _key(route("http://10.0.0.1:8000/v1/"))
