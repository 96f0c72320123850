"""The loop watchdog within one turn of the loop: each call that holds it is captured as
itself, a call on the CPU after one asleep is not taken for a starved loop, and a call
holding the GIL (which stops the watchdog's thread too) is not taken for a paused
process."""

from __future__ import annotations

import asyncio
import re
import time

from legion.diagnostics.watchdog import Block, Capture, LoopWatchdog


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def _watch(*calls: tuple[object, ...]) -> tuple[LoopWatchdog, list[Block], list[Capture]]:
    blocks: list[Block] = []
    captures: list[Capture] = []
    dog = LoopWatchdog(blocks.append, on_capture=captures.append)
    dog.start()
    try:
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        for fn, *args in calls:
            loop.call_soon(fn, *args)  # type: ignore[arg-type]  # (one turn runs them all)
        await asyncio.sleep(0.3)
    finally:
        dog.stop()
    return dog, blocks, captures


async def test_a_call_on_the_cpu_after_one_asleep_is_captured_held() -> None:
    # The CPU it used was measured from the turn's start: after a sleep, a busy call
    # looked starved and was not reported.
    dog, blocks, captures = await _watch((time.sleep, 0.6), (_burn, 0.4))
    held = [c for c in captures if c.held]
    assert len(held) == 2, captures
    assert held[1].began > held[0].began  # (each its own)
    (block,) = blocks
    assert block.held and block.stack[0].function == "_burn"
    assert not dog.health().paused


async def test_a_call_holding_the_gil_is_no_pause() -> None:
    # A C call that holds the GIL stops the watchdog's thread as SIGSTOP would, but the
    # loop's thread runs: "the process did not run" blamed a signal or the machine.
    dog, blocks, _ = await _watch((re.match, r"(a+)+$", "a" * 24 + "b"))
    assert blocks and blocks[0].seconds >= 0.1
    assert not dog.health().paused
