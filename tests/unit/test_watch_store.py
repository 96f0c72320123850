"""`legion run`'s watch of its store ends with the run, whenever the end comes."""

from __future__ import annotations

import asyncio

from legion.cli.run import watch_store


class _Store:
    """A store whose `now` answers when the test says."""

    def __init__(self) -> None:
        self.pending: asyncio.Future[float] | None = None
        self.asked = asyncio.Event()

    async def now(self) -> float:
        self.pending = asyncio.get_running_loop().create_future()
        self.asked.set()
        return await self.pending


async def test_the_watch_ends_when_the_run_ends_as_a_look_is_answered() -> None:
    """On Python 3.11, `asyncio.wait_for` answered a look whose store answered just as
    the run's end cancelled it, and dropped the cancel: the watch looked on for ever, and
    a run stopped by Ctrl-C never wrote its output (1 in 4 Ctrl-Cs of a long run)."""
    store = _Store()
    gone: list[bool] = []
    async with asyncio.timeout(30):  # (a bound on a broken test: it hung)
        async with watch_store(300, lambda: gone.append(True), every=0.01) as watch:
            watch.store = store  # type: ignore[assignment]
            await store.asked.wait()
            assert store.pending is not None
            store.pending.set_result(1.0)  # the store answers...
            await asyncio.sleep(0)  # ...its look ends; the run's block ends now
    assert gone == []
