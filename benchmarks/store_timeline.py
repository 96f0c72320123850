"""Where the no-op path's wall time goes on a SQLite file: the store's calls and the loop.

Runs no-op tasks through a `Runtime` (concurrency 1,000, a warm-up batch first) and
reports, for the measured batch:

- every call to the store's thread, timed from the event loop: how long it waited for
  the thread (queued), ran there (run) and took to come back to the loop (back), with
  the store thread's CPU time inside it (a transaction whose run is much longer than its
  CPU waited for the GIL);
- how long the event loop sat idle in ``select`` (waiting for the store, nothing to run);
- CPU per task of each thread of the process (``/proc/self/task``).

    python benchmarks/store_timeline.py              # 30,000 tasks
    python benchmarks/store_timeline.py --tasks 100000

The measurements it led to are in benchmarks/README.md ("The SQLite store's thread and
the GIL"); `profiles/noop-gil-before.txt` and `-after.txt` are its output before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import selectors
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import legion
from legion.bench.overhead import noop
from legion.store.sqlite import SQLiteStore

_TICK = os.sysconf("SC_CLK_TCK")


class Timeline:
    """The store's calls and the loop's idle time, recorded while `recording`."""

    def __init__(self) -> None:
        self.recording = False
        self.calls: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
        self.idle = 0.0

    def install(self) -> None:
        timeline = self
        call = SQLiteStore._call

        async def timed(store: SQLiteStore, fn: Callable[..., Any], *args: Any) -> Any:
            if not timeline.recording:
                return await call(store, fn, *args)
            inner = args[0] if args and callable(args[0]) else fn
            name = getattr(inner, "__qualname__", repr(inner))
            times: list[float] = []

            def run(*a: Any) -> Any:
                times.extend((time.perf_counter(), time.thread_time()))
                try:
                    return fn(*a)
                finally:
                    times.extend((time.perf_counter(), time.thread_time()))

            asked = time.perf_counter()
            try:
                return await call(store, run, *args)
            finally:
                if len(times) == 4:
                    row = timeline.calls[name]
                    row[0] += 1
                    row[1] += times[0] - asked
                    row[2] += times[2] - times[0]
                    row[3] += time.perf_counter() - times[2]
                    row[4] += times[3] - times[1]

        SQLiteStore._call = timed  # type: ignore[method-assign,assignment]
        select = selectors.EpollSelector.select

        def idle(selector: selectors.EpollSelector, timeout: float | None = None) -> Any:
            began = time.perf_counter()
            try:
                return select(selector, timeout)
            finally:
                if timeline.recording:
                    timeline.idle += time.perf_counter() - began

        selectors.EpollSelector.select = idle  # type: ignore[method-assign,assignment]


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by its Python name (the main thread's:
    the event loop's)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    cpu: dict[str, float] = collections.defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = "event loop" if int(tid) == os.getpid() else names.get(int(tid), tid)
        cpu[name] += (int(fields[11]) + int(fields[12])) / _TICK
    return cpu


async def main(tasks: int) -> None:
    timeline = Timeline()
    timeline.install()
    with tempfile.TemporaryDirectory() as tmp:
        async with legion.Runtime(f"sqlite:///{tmp}/timeline.db", concurrency=1000) as rt:
            async for _ in rt.map(noop, range(1000)):  # warm-up
                pass
            before = thread_cpu()
            timeline.recording = True
            started = time.perf_counter()
            async for _ in rt.map(noop, range(tasks)):
                pass
            wall = time.perf_counter() - started
            timeline.recording = False
            after = thread_cpu()
    print(f"{tasks:,} no-op tasks: {tasks / wall:,.0f} tasks/s, {wall:.3f} s")
    print(f"event loop idle in select: {timeline.idle:.3f} s ({timeline.idle / wall:.0%})")
    print("store calls: count, queued, run, back, CPU in the run (seconds)")
    for name, (n, queued, ran, back, cpu) in sorted(
        timeline.calls.items(), key=lambda kv: -kv[1][2]
    ):
        print(f"  {name}: {n:.0f}, {queued:.3f}, {ran:.3f}, {back:.3f}, {cpu:.3f}")
    print("CPU per task by thread (us):")
    for name in sorted(after, key=lambda k: -(after[k] - before.get(k, 0.0))):
        used = after[name] - before.get(name, 0.0)
        if used > 0.005:
            print(f"  {name}: {used / tasks * 1e6:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=30_000)
    args = parser.parse_args()
    if sys.platform != "linux":
        sys.exit("store_timeline.py reads /proc: Linux only")
    asyncio.run(main(args.tasks))
