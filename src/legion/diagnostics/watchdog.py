"""A watchdog for the event loop: when one agent instance blocks it, say who and where.

The loop beats every ``interval`` (one timer callback). A daemon thread checks the beat;
when it is late by more than ``threshold`` the loop is blocked, and the thread takes the
loop thread's stack (``sys._current_frames``) and the running task while the block is
still going on. When the loop beats again, the block's length is known and it is
reported, in the loop thread, to ``on_block``. While a block goes on, ``on_stuck`` (if
given) hears of it at every check, with its length so far, in the watchdog's thread: the
only place where something can still be done about a loop that never beats again (see
`legion.run.freeze`).

A late loop is not always a blocked one, and the stack taken is the code running at
that moment, which need not be what made the loop late: under load, many short
callbacks in one turn of the loop (HTTP, JSON, the store) add up, and on a machine whose
cores are busy with other work the loop thread may simply wait for a core. So a block
is ``held`` (one call's doing) only when two looks at least a beat apart, from half the
threshold on, find the loop inside the same callback run (asyncio's ``Handle._run``
frame, a new one per run), and the loop thread was not starved meanwhile: runnable but
on a core for less than a fifth of the time (read where the system lets it, on Linux,
from the thread's CPU clock and scheduler state). A thread asleep in a call
(``time.sleep``, a synchronous socket) or busy on the CPU is holding the loop. Nor is a
block held while the whole process stood still (SIGSTOP, a suspended machine): the
watchdog's own thread, which no call on the loop keeps from running, did not run
either; the loop's health says ``paused`` then.

Cost: one timer callback per ``interval`` on the loop and one thread wake-up per
``interval``: nothing per task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import linecache
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from legion.diagnostics.report import Site, user_site

_EVENTS = os.path.join("asyncio", "events.py")
_STARVED_CPU = 0.2
"""A runnable loop thread on a core for less than this share of a block was starved."""
_BUSY = 0.6
"""A loop thread runnable (on a core, or waiting for one) at this share of the looks at a
block at least was computing; where its state cannot be read, on a core for this share
of the block's time until it was captured."""


@dataclass(frozen=True, slots=True)
class Block:
    """The loop was blocked for ``seconds`` by ``task``; ``site`` is the user's line."""

    seconds: float
    task: asyncio.Task[object] | None
    site: Site | None
    stack: tuple[Site, ...]
    held: bool = True
    """One call held the loop all along (see the module's notes); ``False``: the loop
    was late for other reasons (many short callbacks, or waiting for a core)."""
    busy: bool = False
    """The call kept the loop's thread on a core (computing) for most of it, rather than
    asleep or waiting on I/O (``False`` when unknown)."""


@dataclass(frozen=True, slots=True)
class Capture:
    """What a block looked like while it went on (taken in the watchdog's thread)."""

    since: float  # the loop's last beat before the block (monotonic seconds)
    task: asyncio.Task[object] | None
    stack: tuple[Site, ...]
    held: bool = False
    began: float = 0.0
    """When the call captured began holding the loop, as near as the looks tell: the
    last beat for the first call of a turn, else when a look first found it (several
    calls may block one after another in one turn of the loop, each reported with its
    own length)."""
    ended: float | None = None
    """When it let go, if another call was captured after it in the same turn."""
    cpu_busy: bool = False
    """The loop's thread was on a core for most of the call until it was captured."""
    looks: int = 0
    running: int = 0
    """Of the looks at the thread's scheduler state while the call held the loop, those
    that found it runnable (on a core or waiting for one) rather than asleep: a thread
    computing on a machine whose cores are shared is on one for half the time or less,
    but runnable all along."""

    @property
    def busy(self) -> bool:
        """The call kept the loop's thread computing for most of it (see `Block.busy`)."""
        if self.looks == 0:
            return self.cpu_busy
        return self.running >= _BUSY * self.looks

    def seconds(self, now: float) -> float:
        """How long the call held the loop: until ``now``, or until it let go."""
        return (self.ended if self.ended is not None else now) - max(self.began, self.since)


@dataclass(frozen=True, slots=True)
class LoopHealth:
    lag: float  # the latest beat's lateness, seconds
    recent_lag: float  # lateness averaged over about the last half second
    max_lag: float
    blocks: int
    blocked_seconds: float
    paused: bool = False
    """The latest late beat (while the recent lag stays up) was late because the whole
    process did not run (stopped by SIGSTOP, a suspended machine, or starved of CPU):
    the watchdog's own thread did not run either, which no call holding the event loop
    stops."""


class LoopWatchdog:
    def __init__(
        self,
        on_block: Callable[[Block], None],
        *,
        threshold: float = 0.1,
        interval: float | None = None,
        on_capture: Callable[[Capture], None] | None = None,
        on_stuck: Callable[[Capture, float], None] | None = None,
    ) -> None:
        """``on_block`` hears of each block when it ends, in the loop's thread;
        ``on_capture`` (optional) hears of it while it goes on, in the watchdog's thread:
        the only chance to tell the blocked task before it ends, when it ends right after
        the block; ``on_stuck`` (optional) hears of it at every check while it goes on,
        with its length so far, in the watchdog's thread."""
        self._on_block = on_block
        self._on_capture = on_capture
        self._on_stuck = on_stuck
        self.threshold = threshold
        self._interval = interval if interval is not None else min(0.025, threshold / 4)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._cpu_clock: int | None = None
        self._status_file = ""
        self._last_cpu = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = 0.0
        self._capture: Capture | None = None
        self._captured_callback: FrameType | None = None  # (the watchdog thread's own)
        self._lag = 0.0
        self._recent = 0.0
        self._max_lag = 0.0
        self._blocks = 0
        self._blocked = 0.0
        self._paused = False
        # The watchdog's thread's last wake, and its latest gap between two wakes (its
        # start, its end) long past its interval: the process did not run meanwhile.
        self._woke = 0.0
        self._woke_cpu: float | None = None  # (the loop thread's CPU time then)
        self._gap = (0.0, 0.0)
        self._looked: tuple[float, float | None] = (0.0, None)  # (the last look, its CPU)

    def start(self) -> None:
        """Start watching the running loop (call from the loop's thread)."""
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._cpu_clock, self._status_file = _thread_clock()
        self._last_beat = time.monotonic()
        self._last_cpu = time.thread_time()
        self._handle = self._loop.call_later(self._interval, self._beat)
        self._thread = threading.Thread(target=self._watch, name="legion-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join()

    def health(self) -> LoopHealth:
        return LoopHealth(
            self._lag, self._recent, self._max_lag, self._blocks, self._blocked, self._paused
        )

    # -- in the loop's thread ----------------------------------------------------------

    def _beat(self) -> None:
        now = time.monotonic()
        previous = self._last_beat
        self._last_beat = now
        if self._cpu_clock is not None:
            self._last_cpu = time.thread_time()
        self._lag = max(0.0, now - previous - self._interval)
        # Averaged over about half a second of time (a long block weighs by its length).
        self._recent += (self._lag - self._recent) * min(1.0, (now - previous) / 0.5)
        paused = False
        if self._lag >= self.threshold:
            gap_from, gap_to = self._gap
            # (its thread may not have run since it was let go; a call holding the GIL
            # stops it too, but the loop thread runs then)
            unseen = now - self._woke
            if self._cpu_clock is not None and _ran(self._woke_cpu, time.thread_time(), unseen):
                unseen = 0.0
            overlap = max(0.0, min(now, gap_to) - max(previous, gap_from))
            self._paused = paused = max(unseen, overlap) >= self._lag / 2
        elif self._recent < self.threshold:  # (said of the recent lag while it lasts)
            self._paused = False
        self._max_lag = max(self._max_lag, self._lag)
        capture, self._capture = self._capture, None
        if self._lag >= self.threshold:
            self._blocks += 1
            self._blocked += self._lag
            seconds, task, stack, held, busy = (
                (
                    capture.seconds(now),
                    capture.task,
                    capture.stack,
                    capture.held and not paused,
                    capture.busy,
                )
                if capture and capture.since == previous
                else (self._lag, None, (), False, False)
            )
            self._on_block(Block(seconds, task, user_site(stack), stack, held, busy))
        assert self._loop is not None
        self._handle = self._loop.call_later(self._interval, self._beat)

    # -- in the watchdog's thread ------------------------------------------------------

    def _watch(self) -> None:
        # (the block's last beat, the callback seen running, when it began as near as
        # known, the loop thread's CPU time then)
        probe: _Probe = (0.0, None, 0.0, None)
        self._woke, self._woke_cpu = time.monotonic(), self._loop_cpu()
        while not self._stopped.wait(self._interval):
            woke, cpu = time.monotonic(), self._loop_cpu()
            if woke - self._woke > self._interval + self.threshold and not _ran(
                self._woke_cpu, cpu, woke - self._woke
            ):  # (a call holding the GIL stops this thread too, but the loop's runs)
                self._gap = (self._woke, woke)
            self._woke, self._woke_cpu = woke, cpu
            last = self._last_beat
            late = time.monotonic() - last
            try:
                probe = self._look(last, late, probe)
            except Exception:  # (the thread must outlive any one look: see `_callback_frame`)
                probe = (0.0, None, 0.0, None)
                continue
            capture = self._capture
            if (
                self._on_stuck is not None
                and late >= self.threshold
                and capture is not None
                and capture.since == last
                and self._gap[1] <= capture.since  # (no freeze: the process stood still)
            ):
                self._on_stuck(capture, capture.seconds(time.monotonic()))

    def _look(self, last: float, late: float, probe: _Probe) -> _Probe:
        """Take the loop thread's stack while a block goes on; answer the new probe.

        One turn of the loop may run several blocking calls one after another (the
        answers of many instances' calls arriving together, each then sleeping): each is
        captured as it runs, a call held since it was first seen, for `threshold` at
        least."""
        if late < self.threshold / 2:
            return probe
        # Read the stack now: the frames move on as soon as the block ends.
        cpu = self._loop_cpu()
        frame = sys._current_frames().get(self._thread_id)
        callback = _callback_frame(frame)
        looked, self._looked = self._looked, (time.monotonic(), cpu)
        capture = self._capture
        if (
            capture is not None
            and capture.since == last
            and capture.held
            and callback is self._captured_callback
        ):
            # (the call captured holds the loop still: what it does now counts too)
            state = self._state()
            if state is not None:
                self._capture = dataclasses.replace(
                    capture, looks=capture.looks + 1, running=capture.running + (state == b"R")
                )
            return probe
        held = probe[0] == last and callback is not None and callback is probe[1]
        if not held:
            # The first call of a turn began at its last beat; a later one after the
            # turn's previous look, which found another call running.
            probe = (
                (last, callback, last, self._last_cpu)
                if probe[0] != last
                else (last, callback, looked[0], looked[1])
            )
        began = probe[2]
        if time.monotonic() - began < self.threshold or (
            capture is not None and capture.since == last and not held
        ):
            return probe
        # (a call the loop was in when the process stood still did not hold it all along)
        held = held and not self._starved(began, probe[3], cpu) and self._gap[1] <= began
        task = asyncio.tasks._current_tasks.get(self._loop)  # type: ignore[attr-defined]
        busy = _share(probe[3], cpu, time.monotonic() - began) >= _BUSY
        state = self._state()
        self._capture = capture = Capture(
            last,
            task,
            tuple(_stack(frame)),
            held,
            began,
            cpu_busy=busy,
            looks=int(state is not None),
            running=int(state == b"R"),
        )
        self._captured_callback = callback
        if self._on_capture is not None:
            self._on_capture(capture)
        return probe

    def _loop_cpu(self) -> float | None:
        if self._cpu_clock is None:
            return None
        try:
            return time.clock_gettime(self._cpu_clock)
        except OSError:
            return None

    def _starved(self, since: float, cpu_since: float | None, cpu: float | None) -> bool:
        """Whether the loop thread, in one call since ``since`` (its CPU time then
        ``cpu_since``, now ``cpu``), is waiting for a core: runnable, and on one for less
        than a fifth of the time (``False`` when unknown)."""
        if cpu is None or cpu_since is None:
            return False
        return not _ran(cpu_since, cpu, time.monotonic() - since) and self._state() == b"R"

    def _state(self) -> bytes | None:
        """The loop thread's scheduler state (``R``: on a core or waiting for one; ``S``,
        ``D``: asleep, in a call), where the system tells it (Linux)."""
        if not self._status_file:
            return None
        try:
            with open(self._status_file, "rb") as file:
                return file.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None


_Probe = tuple[float, FrameType | None, float, float | None]


def _share(cpu_before: float | None, cpu_after: float | None, seconds: float) -> float:
    """The share of ``seconds`` the loop thread was on a core (0 when unknown)."""
    if cpu_before is None or cpu_after is None or seconds <= 0:
        return 0.0
    return (cpu_after - cpu_before) / seconds


def _ran(cpu_before: float | None, cpu_after: float | None, seconds: float) -> bool:
    """Whether the loop thread was on a core for a fifth of ``seconds`` at least, by its
    CPU times at the start and the end (``False`` when unknown)."""
    if cpu_before is None or cpu_after is None:
        return False
    return cpu_after - cpu_before >= _STARVED_CPU * seconds


def _thread_clock() -> tuple[int | None, str]:
    """The calling thread's CPU clock, and the file of its scheduler state (Linux)."""
    status = f"/proc/self/task/{threading.get_native_id()}/stat"
    try:
        clock = time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return None, ""
    return (clock, status) if os.path.exists(status) else (None, "")


def _callback_frame(frame: FrameType | None) -> FrameType | None:
    """The frame of the loop callback that ``frame`` runs in (asyncio's ``Handle._run``):
    a new one for every callback run, so the same one seen twice is one callback that
    ran all along."""
    # (Another thread's frames, read while it may run: CPython 3.11 once answered a list
    # for one, and the watchdog's thread died of it. Anything else than a frame: none.)
    while isinstance(frame, FrameType):
        code = frame.f_code
        if code.co_name == "_run" and code.co_filename.endswith(_EVENTS):
            return frame
        frame = frame.f_back
    return None


STACK_FRAMES = 256
"""Frames kept of a blocked loop's stack: enough to reach the agent's line below a deep
library call (an import inside the agent ran ~40 frames deep; 30 were kept)."""

_STACK_TEXTS = 8  # frames whose line of code is read at once (the ones reports show)


def _stack(frame: FrameType | None, limit: int = STACK_FRAMES) -> list[Site]:
    """Sites from the innermost frame outwards; the code of the first `_STACK_TEXTS`
    (`legion.diagnostics.report.with_code` reads any other's when it is reported)."""
    sites: list[Site] = []
    while isinstance(frame, FrameType) and len(sites) < limit:
        code = frame.f_code
        line = frame.f_lineno or 0  # None while the frame is being torn down
        if code.co_name == IMPORTING and code.co_filename.startswith("<frozen importlib"):
            text = f"import {_module_name(frame)}"  # (frozen code has no line to show)
        elif len(sites) < _STACK_TEXTS:
            text = linecache.getline(code.co_filename, line).strip()
        else:
            text = ""
        sites.append(Site(code.co_filename, line, code.co_name, text))
        frame = frame.f_back
    return sites


IMPORTING = "_find_and_load"
"""The import system's function that loads one module (its argument ``name``)."""


def _module_name(frame: FrameType) -> str:
    """The module an import system's frame loads, or ``?``."""
    try:
        name = frame.f_locals.get("name")
    except Exception:  # (a frame torn down meanwhile)
        return "?"
    return name if isinstance(name, str) else "?"
