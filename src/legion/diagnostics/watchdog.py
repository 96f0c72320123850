"""A watchdog for the event loop: when one agent instance blocks it, say who and where.

The loop beats every ``interval`` (one timer callback). A daemon thread checks the beat;
when it is late by more than ``threshold`` the loop is blocked, and the thread takes the
loop thread's stack (``sys._current_frames``) and the running task while the block is
still going on. When the loop beats again, the block's length is known and it is
reported, in the loop thread, to ``on_block``. While a block goes on, ``on_stuck`` (if
given) hears of it at every check, with its length so far, in the watchdog's thread: the
only place where something can still be done about a loop that never beats again (see
:mod:`legion.diagnostics.freeze`).

Cost: one timer callback per ``interval`` on the loop and one thread wake-up per
``interval``: nothing per task.
"""

from __future__ import annotations

import asyncio
import linecache
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from .report import Site, user_site


@dataclass(frozen=True, slots=True)
class Block:
    """The loop was blocked for ``seconds`` by ``task``; ``site`` is the user's line."""

    seconds: float
    task: asyncio.Task[object] | None
    site: Site | None
    stack: tuple[Site, ...]


@dataclass(frozen=True, slots=True)
class Capture:
    """What a block looked like while it went on (taken in the watchdog's thread)."""

    since: float  # the loop's last beat before the block (monotonic seconds)
    task: asyncio.Task[object] | None
    stack: tuple[Site, ...]


@dataclass(frozen=True, slots=True)
class LoopHealth:
    lag: float  # the latest beat's lateness, seconds
    recent_lag: float  # lateness averaged over about the last half second
    max_lag: float
    blocks: int
    blocked_seconds: float


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
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = 0.0
        self._capture: Capture | None = None
        self._lag = 0.0
        self._recent = 0.0
        self._max_lag = 0.0
        self._blocks = 0
        self._blocked = 0.0

    def start(self) -> None:
        """Start watching the running loop (call from the loop's thread)."""
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._last_beat = time.monotonic()
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
        return LoopHealth(self._lag, self._recent, self._max_lag, self._blocks, self._blocked)

    # -- in the loop's thread ----------------------------------------------------------

    def _beat(self) -> None:
        now = time.monotonic()
        previous = self._last_beat
        self._last_beat = now
        self._lag = max(0.0, now - previous - self._interval)
        # Averaged over about half a second of time (a long block weighs by its length).
        self._recent += (self._lag - self._recent) * min(1.0, (now - previous) / 0.5)
        self._max_lag = max(self._max_lag, self._lag)
        capture, self._capture = self._capture, None
        if self._lag >= self.threshold:
            self._blocks += 1
            self._blocked += self._lag
            task, stack = (
                (capture.task, capture.stack)
                if capture and capture.since == previous
                else (None, ())
            )
            self._on_block(Block(self._lag, task, user_site(stack), stack))
        assert self._loop is not None
        self._handle = self._loop.call_later(self._interval, self._beat)

    # -- in the watchdog's thread ------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval):
            last = self._last_beat
            blocked = time.monotonic() - last
            if blocked < self.threshold:
                continue
            capture = self._capture
            if capture is None or capture.since != last:
                # Read the stack now: the frames move on as soon as the block ends.
                frame = sys._current_frames().get(self._thread_id)
                task = asyncio.tasks._current_tasks.get(self._loop)  # type: ignore[attr-defined]
                self._capture = capture = Capture(last, task, tuple(_stack(frame)))
                if self._on_capture is not None:
                    self._on_capture(capture)
            if self._on_stuck is not None:
                self._on_stuck(capture, blocked)


def _stack(frame: FrameType | None, limit: int = 30) -> list[Site]:
    """Sites from the innermost frame outwards."""
    sites: list[Site] = []
    while frame is not None and len(sites) < limit:
        code = frame.f_code
        line = frame.f_lineno
        sites.append(
            Site(
                code.co_filename,
                line,
                code.co_name,
                linecache.getline(code.co_filename, line).strip(),
            )
        )
        frame = frame.f_back
    return sites
