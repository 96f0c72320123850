"""``overhead``: what the durable path costs per task, next to no durability at all.

A no-op agent through legion's full durable path - batched submit, batched leases, one
asyncio task per instance, group-committed completions, results streamed back - on a
SQLite file and on PostgreSQL, next to ``asyncio.gather`` + a semaphore over the same
no-op coroutine, in the same run and process. Best of ``repeat`` runs each.

Every measurement runs in a fresh child process: in one process, each run inherits what
the earlier ones left (a bare ``asyncio.gather`` run after a few legion runs was 2-3x
slower than the first one).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import legion
from legion.bench.child import in_child
from legion.bench.postgres import fresh_schema
from legion.bench.results import BenchResult, Plot, Progress, Table, fmt_num, quiet

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "overhead"
BARE = "asyncio.gather + semaphore"
SQLITE = "legion, SQLite file"
POSTGRES = "legion, PostgreSQL"


@dataclass(frozen=True, slots=True)
class OverheadOptions:
    tasks: int = 50_000
    concurrency: int = 1000
    repeat: int = 3
    postgres: str | None = None
    """A PostgreSQL URL (a fresh schema is made in its database); ``None``: SQLite only."""

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.concurrency < 1 or self.repeat < 1:
            raise ValueError("tasks, concurrency and repeat must be >= 1")


@legion.agent(name="bench-noop", retries=0)
async def noop(ctx: legion.Context, i: int) -> int:
    """Does nothing: what is measured is everything around it."""
    return i


async def _noop(i: int) -> int:
    return i


async def bare_gather(n: int, concurrency: int) -> tuple[float, float]:
    """Seconds and CPU seconds for ``n`` no-op coroutines under a semaphore."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with sem:
            return await _noop(i)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, time.process_time() - cpu0


async def through_legion(url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Seconds and CPU seconds (this process, every thread) for ``n`` no-op tasks."""
    async with legion.Runtime(url, concurrency=concurrency) as rt:
        cpu0, t0 = time.process_time(), time.perf_counter()
        done = 0
        async for result in rt.map(noop, range(n)):
            done += result.ok
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if done != n:
        raise RuntimeError(f"overhead: only {done} of {n} no-op tasks succeeded")
    return elapsed, cpu


def measure(kind: str, n: int, concurrency: int, url: str) -> tuple[float, float]:
    """Seconds and CPU seconds of one path (``bare`` or legion on ``url``); run in a
    child process by `run`."""
    if kind == "bare":
        return asyncio.run(bare_gather(n, concurrency))
    return asyncio.run(through_legion(url, n, concurrency))


async def run(
    opts: OverheadOptions | None = None,
    *,
    progress: Progress = quiet,
    workdir: Path | None = None,
) -> BenchResult:
    opts = opts or OverheadOptions()
    rates: dict[str, list[float]] = {BARE: [], SQLITE: []}
    cpu: dict[str, list[float]] = {BARE: [], SQLITE: []}
    if opts.postgres:
        rates[POSTGRES], cpu[POSTGRES] = [], []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for attempt in range(opts.repeat):
            progress(f"overhead: round {attempt + 1}/{opts.repeat}, {opts.tasks:,} tasks each")
            elapsed, used = await in_child(measure, "bare", opts.tasks, opts.concurrency, "")
            rates[BARE].append(opts.tasks / elapsed)
            cpu[BARE].append(used / opts.tasks)
            url = f"sqlite:///{Path(tmp) / f'overhead-{time.monotonic_ns()}.db'}"
            elapsed, used = await in_child(measure, "legion", opts.tasks, opts.concurrency, url)
            rates[SQLITE].append(opts.tasks / elapsed)
            cpu[SQLITE].append(used / opts.tasks)
            if opts.postgres:
                async with fresh_schema(opts.postgres) as pg_url:
                    elapsed, used = await in_child(
                        measure, "legion", opts.tasks, opts.concurrency, pg_url
                    )
                rates[POSTGRES].append(opts.tasks / elapsed)
                cpu[POSTGRES].append(used / opts.tasks)
            progress(
                "  " + ", ".join(f"{name}: {values[-1]:,.0f}/s" for name, values in rates.items())
            )
    best = {name: max(values) for name, values in rates.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    table = Table(
        f"{opts.tasks:,} no-op tasks, concurrency {opts.concurrency:,}, best of {opts.repeat}",
        ("path", "tasks/s", "vs bare gather", "CPU per task (this process)"),
        tuple(
            (
                name,
                fmt_num(value),
                f"{value / best[BARE]:.3f}",
                f"{best_cpu[name] * 1e6:,.1f} µs",
            )
            for name, value in best.items()
        ),
    )
    notes = [
        "legion: submit (batched insert), lease (batched), one asyncio task per instance, "
        "group-committed completions, results streamed back; bare: no durability at all.",
        "CPU per task counts the measuring process only (event loop and store threads); "
        "the PostgreSQL server's own CPU is not included. Each run in a fresh process.",
        "Target: legion on SQLite >= 20,000 tasks/s on this 2-core machine: "
        + ("met." if best[SQLITE] >= 20_000 else "NOT met."),
    ]
    if not opts.postgres:
        notes.append("PostgreSQL not measured: pass --postgres URL.")
    return BenchResult(
        name=NAME,
        title="no-op agents through the durable path vs bare asyncio.gather",
        data={
            "options": asdict(opts),
            "tasks_per_second": {k: {"best": max(v), "all": v} for k, v in rates.items()},
            "cpu_us_per_task": {k: min(v) * 1e6 for k, v in cpu.items()},
            "legion_vs_bare": {k: v / best[BARE] for k, v in best.items()},
        },
        tables=[table],
        notes=notes,
        plots=[Plot("rates", _plot(best))],
    )


def _plot(best: dict[str, float]) -> Any:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        names = list(best)
        ax.barh(names, [best[n] for n in names], color=["#888", "#2471a3", "#7d3c98"][: len(names)])
        ax.axvline(20_000, color="#c0392b", linestyle="--", label="target: 20,000/s")
        ax.set_xlabel("no-op tasks per second (best run)")
        ax.set_title("overhead: the durable path vs bare asyncio.gather")
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize="small")

    return draw
