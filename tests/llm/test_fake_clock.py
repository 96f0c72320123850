"""legion.testing.FakeClock: virtual time that moves only when told."""

from __future__ import annotations

import asyncio

import pytest

from legion.testing import FakeClock


async def test_advance_wakes_sleepers_in_deadline_order_at_their_deadline() -> None:
    clock = FakeClock(start=100.0)
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(nap(n, s)) for n, s in [("c", 3), ("a", 1), ("b", 2), ("a2", 1)]]
    await clock.advance(2.5)
    assert woke == [("a", 101.0), ("a2", 101.0), ("b", 102.0)]
    assert clock.now() == 102.5 and clock.sleepers == 1
    await clock.advance(10)
    assert woke[-1] == ("c", 103.0)
    await asyncio.gather(*tasks)


async def test_run_jumps_time_and_returns_the_result() -> None:
    clock = FakeClock()

    async def work() -> str:
        await clock.sleep(30)
        await clock.sleep(0)
        await clock.sleep(60)
        return "done"

    assert await clock.run(work()) == "done"
    assert clock.now() == 90.0


async def test_run_refuses_to_wait_on_anything_but_the_clock() -> None:
    clock = FakeClock()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(RuntimeError, match="something other than this clock"):
        await clock.run(never)
    assert never.cancelled()


async def test_cancelled_sleepers_are_skipped() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(5))
    await clock.settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert clock.sleepers == 0
    await clock.advance(10)
    assert clock.now() == 10.0
