"""The loop watchdog within one turn of the loop: each call that holds it is captured as
itself, a call on the CPU after one asleep is not taken for a starved loop, and a call
holding the GIL (which stops the watchdog's thread too) is not taken for a paused
process.

What the watchdog reads of the loop thread's CPU time is a clock of the test's own: a
core all the loop's, but while it sleeps (`_LoopCpu`). On the real clock, a loaded
machine gave the loop thread less than a fifth of a core while it burned, which the
watchdog rightly takes for a starved loop, not a held one (9 of 30 runs beside two busy
processes)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from types import SimpleNamespace

import pytest

from legion.diagnostics import watchdog
from legion.diagnostics.watchdog import Block, Capture, LoopWatchdog


class _LoopCpu:
    """The loop thread's CPU time, as if it had a core of its own: the time since it
    began, less what it spent in `sleep`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slept = 0.0
        self._asleep_since: float | None = None

    def now(self, *_: object) -> float:
        with self._lock:
            now = time.monotonic()
            asleep = 0.0 if self._asleep_since is None else now - self._asleep_since
            return now - self._slept - asleep

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._asleep_since = time.monotonic()
        time.sleep(seconds)
        with self._lock:
            assert self._asleep_since is not None
            self._slept += time.monotonic() - self._asleep_since
            self._asleep_since = None


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch) -> _LoopCpu:
    clock = _LoopCpu()
    clocks = SimpleNamespace(
        monotonic=time.monotonic,
        sleep=time.sleep,
        thread_time=clock.now,  # (read in the loop's thread)
        clock_gettime=clock.now,  # (the loop thread's, read in the watchdog's)
        pthread_getcpuclockid=time.pthread_getcpuclockid,
    )
    monkeypatch.setattr(watchdog, "time", clocks)
    return clock


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


async def test_a_call_on_the_cpu_after_one_asleep_is_captured_held(cpu: _LoopCpu) -> None:
    # The CPU it used was measured from the turn's start: after a sleep, a busy call
    # looked starved and was not reported.
    dog, blocks, captures = await _watch((cpu.sleep, 0.6), (_burn, 0.4))
    held = [c for c in captures if c.held]
    assert len(held) == 2, captures
    assert held[1].began > held[0].began  # (each its own)
    (block,) = blocks
    assert block.held and block.stack[0].function == "_burn"
    assert not dog.health().paused


async def test_a_call_holding_the_gil_is_no_pause(cpu: _LoopCpu) -> None:
    # A C call that holds the GIL stops the watchdog's thread as SIGSTOP would, but the
    # loop's thread runs: "the process did not run" blamed a signal or the machine.
    dog, blocks, _ = await _watch((re.match, r"(a+)+$", "a" * 24 + "b"))
    assert blocks and blocks[0].seconds >= 0.1
    assert not dog.health().paused


async def test_a_call_computing_is_told_apart_from_one_asleep(cpu: _LoopCpu) -> None:
    # Both were told to use `asyncio.to_thread`, which frees the loop of a sleep but not
    # of Python computing (the interpreter runs one thread at a time).
    _, asleep, _ = await _watch((cpu.sleep, 0.4))
    _, computing, _ = await _watch((_burn, 0.4))
    assert [(b.held, b.busy) for b in asleep] == [(True, False)]
    assert [(b.held, b.busy) for b in computing] == [(True, True)]


async def test_a_call_computing_on_a_shared_core_is_told_computing(
    cpu: _LoopCpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a machine whose cores other processes share, a thread computing is on a core
    # half the time: that share (0.5) was read as "not computing", and a busy loop in the
    # agent was told to move to `asyncio.to_thread`. It is runnable all along.
    def half() -> float:
        return cpu.now() / 2

    clocks = watchdog.time  # type: ignore[attr-defined]  # (the fixture's stand-in)
    monkeypatch.setattr(clocks, "thread_time", half)
    monkeypatch.setattr(clocks, "clock_gettime", lambda *_: half())
    _, computing, _ = await _watch((_burn, 0.4))
    _, asleep, _ = await _watch((cpu.sleep, 0.4))
    assert [(b.held, b.busy) for b in computing] == [(True, True)]
    assert [(b.held, b.busy) for b in asleep] == [(True, False)]
