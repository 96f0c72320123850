"""Priority lanes and tenant turns at a route (`legion.llm.lanes`), on a fake clock:
what is counted is the order of starts, never elapsed time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from legion import attempt
from legion.llm.capacity import Capacity
from legion.llm.lanes import Lanes
from legion.testing import FakeClock


@dataclass(order=True)
class Caller:
    key: int
    priority: int = field(compare=False, default=0)
    tenant: str = field(compare=False, default="default")


def test_one_lane_one_tenant_is_the_plain_queue() -> None:
    lanes: Lanes[Caller] = Lanes()
    for key in (3, 1, 2):
        lanes.push(Caller(key))
    assert [lanes.pop().key for _ in range(3)] == [1, 2, 3]  # type: ignore[union-attr]
    assert lanes.pop() is None and not lanes


def test_the_higher_lane_goes_first_but_the_lower_keeps_its_share() -> None:
    lanes: Lanes[Caller] = Lanes(min_share=0.1)
    for key in range(100):
        lanes.push(Caller(key, priority=0))
    for key in range(100, 200):
        lanes.push(Caller(key, priority=10))
    served = [lanes.pop().priority for _ in range(100)]  # type: ignore[union-attr]
    assert served[:9] == [10] * 9  # interactive first...
    assert served.count(0) == 10  # ...and the batch lane gets one turn in ten
    assert all(served[i] == 0 for i in range(9, 100, 10))


def test_tenants_take_turns_within_a_lane() -> None:
    lanes: Lanes[Caller] = Lanes()
    for key in range(1000):
        lanes.push(Caller(key, tenant="big"))
    for key in range(1000, 1003):
        lanes.push(Caller(key, tenant="small"))
    first = [lanes.pop().tenant for _ in range(6)]  # type: ignore[union-attr]
    assert first == ["big", "small", "big", "small", "big", "small"]
    assert len(lanes) == 997


def test_a_caller_that_gives_up_leaves_its_lane() -> None:
    lanes: Lanes[Caller] = Lanes()
    a, b = Caller(1, tenant="a"), Caller(2, priority=5, tenant="b")
    lanes.push(a)
    lanes.push(b)
    lanes.remove(b)
    assert lanes.pop() is a and lanes.pop() is None
    with pytest.raises(ValueError):
        Lanes(min_share=0.9)


async def _queue_calls(
    capacity: Capacity,
    clock: FakeClock,
    starts: list[tuple[str, float]],
    label: str,
    priority: int,
    tenant: str = "default",
) -> None:
    attempt.CURRENT.set(attempt.AttemptTime(None, now=clock.now, priority=priority, tenant=tenant))
    async with capacity.reserve(10) as slot:
        starts.append((label, clock.now()))
        slot.settle(10)


async def test_interactive_calls_are_not_held_up_by_a_large_batch_on_the_same_route() -> None:
    """10,000 batch calls queued at a 6,000 rpm route; then 50 interactive calls arrive,
    one every second. Each interactive call starts within two starts of its arrival (the
    head already chosen, then itself), as it would on an idle route: the batch ahead of it
    does not delay it."""
    clock = FakeClock()
    capacity = Capacity("r", rpm=6000, timer=clock)
    starts: list[tuple[str, float]] = []
    batch = [
        asyncio.create_task(_queue_calls(capacity, clock, starts, f"b{i}", 0))
        for i in range(10_000)
    ]
    await clock.settle()
    waited_turns = []
    interactive = []
    for i in range(50):
        await clock.advance(1.0)
        before = len(starts)
        interactive.append(asyncio.create_task(_queue_calls(capacity, clock, starts, f"i{i}", 10)))
        await clock.settle()
        while not any(label == f"i{i}" for label, _ in starts[before:]):
            await clock.advance(0.001)
        position = next(n for n, (label, _) in enumerate(starts[before:]) if label == f"i{i}")
        waited_turns.append(position)
    assert max(waited_turns) <= 1, waited_turns
    for task in batch:
        task.cancel()
    await asyncio.gather(*batch, *interactive, return_exceptions=True)


async def test_a_batch_keeps_its_share_under_a_flood_of_interactive_calls() -> None:
    clock = FakeClock()
    capacity = Capacity("r", rpm=6000, timer=clock, lower_share=0.2)
    starts: list[tuple[str, float]] = []
    tasks = [
        asyncio.create_task(_queue_calls(capacity, clock, starts, "batch", 0)) for _ in range(500)
    ]
    tasks += [
        asyncio.create_task(_queue_calls(capacity, clock, starts, "interactive", 10))
        for _ in range(500)
    ]
    await clock.advance(5.0)  # ~490 starts at the pace
    served = [label for label, _ in starts]
    assert len(served) > 400
    share = served.count("batch") / len(served)
    assert 0.19 <= share <= 0.22, share
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_tenant_cannot_starve_the_others_of_a_route() -> None:
    clock = FakeClock()
    capacity = Capacity("r", rpm=600, timer=clock)
    starts: list[tuple[str, float]] = []
    tasks = [
        asyncio.create_task(_queue_calls(capacity, clock, starts, "big", 0, tenant="big"))
        for _ in range(2000)
    ]
    await clock.advance(1.0)
    arrived = len(starts)
    tasks += [
        asyncio.create_task(_queue_calls(capacity, clock, starts, "small", 0, tenant="small"))
        for _ in range(20)
    ]
    await clock.advance(5.0)  # 50 starts at 10 a second
    after = [label for label, _ in starts[arrived:]]
    first = after.index("small")
    assert first <= 2, after  # the head already chosen, the turn in progress, then its own
    # From then on the small tenant gets every other start until it is done.
    assert after[first : first + 39] == ["small", "big"] * 19 + ["small"], after
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
