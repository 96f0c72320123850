"""``overhead``: what the durable path costs per task, next to no durability at all.

A no-op agent through legion's full durable path - batched submit, batched leases, one
asyncio task per instance, group-committed completions, results streamed back - on a
SQLite file and on PostgreSQL, next to the reference batched queue
(`legion.bench.batched_queue`) on the same store and to ``asyncio.gather`` + a
semaphore over the same no-op coroutine, in the same run. Best of ``repeat`` runs each.

Then agents that each wait 50 ms on I/O (``asyncio.sleep``), as many as twenty rounds of
``concurrency`` (at most ``tasks``), on a SQLite file: their makespan next to the floor,
``ceil(n / concurrency) x 50 ms``, what a runtime with no cost at all would take, and next
to ``asyncio.gather`` + a semaphore over the same waits, what this machine's asyncio takes
with no durability at all. Each round of waits begins when the last one ends, so what
every task costs the event loop adds to the makespan: on a machine where Python runs
slowly, bare asyncio itself is well above the floor, and the ratio to it says what
legion adds.

Every measurement runs in a fresh child process: in one process, each run inherits what
the earlier ones left (a bare ``asyncio.gather`` run after a few legion runs was 2-3x
slower than the first one).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import legion
from legion.bench import batched_queue
from legion.bench.child import in_child
from legion.bench.postgres import fresh_schema
from legion.bench.results import BenchResult, Plot, Progress, Table, fmt_num, quiet

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "overhead"
BARE = "asyncio.gather + semaphore"
SQLITE = "legion, SQLite file"
POSTGRES = "legion, PostgreSQL"
QUEUE_SQLITE = "batched queue, SQLite file"
QUEUE_POSTGRES = "batched queue, PostgreSQL"
# Each legion path and the reference queue on the same store.
REFERENCE = {SQLITE: QUEUE_SQLITE, POSTGRES: QUEUE_POSTGRES}
IO_SECONDS = 0.05
IO_ROUNDS = 20  # rounds of `concurrency` I/O agents (at most `tasks`)


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

    @property
    def io_tasks(self) -> int:
        """How many 50 ms I/O agents the I/O run submits."""
        return min(self.tasks, IO_ROUNDS * self.concurrency)

    @property
    def io_floor(self) -> float:
        """Seconds the I/O run takes at the least: its rounds of 50 ms, nothing else."""
        return math.ceil(self.io_tasks / self.concurrency) * IO_SECONDS


@legion.agent(name="bench-noop", retries=0)
async def noop(ctx: legion.Context, i: int) -> int:
    """Does nothing: what is measured is everything around it."""
    return i


@legion.agent(name="bench-io", retries=0)
async def io_wait(ctx: legion.Context, i: int) -> int:
    """Waits 50 ms on I/O, as an agent awaiting a service would."""
    await asyncio.sleep(IO_SECONDS)
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


async def bare_io(n: int, concurrency: int) -> tuple[float, float]:
    """Seconds and CPU seconds for ``n`` coroutines that each wait 50 ms, under a
    semaphore: the I/O agents' waits with no durability at all."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with sem:
            await asyncio.sleep(IO_SECONDS)
            return i

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, time.process_time() - cpu0


async def through_legion(
    url: str, n: int, concurrency: int, agent: legion.Agent = noop
) -> tuple[float, float]:
    """Seconds and CPU seconds (this process, every thread) for ``n`` no-op tasks (or
    tasks of ``agent``)."""
    async with legion.Runtime(url, concurrency=concurrency) as rt:
        cpu0, t0 = time.process_time(), time.perf_counter()
        done = 0
        async for result in rt.map(agent, range(n)):
            done += result.ok
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if done != n:
        raise RuntimeError(f"overhead: only {done} of {n} no-op tasks succeeded")
    return elapsed, cpu


async def through_queue(url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Seconds and CPU seconds for ``n`` no-op jobs through the reference batched queue
    (`legion.bench.batched_queue`) on the same kind of store."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    if url.startswith("sqlite:///"):
        done = await batched_queue.run_sqlite(
            url[len("sqlite:///") :], _noop, range(n), concurrency
        )
    else:
        libpq = _libpq_url(url)
        done = await batched_queue.run_postgres(libpq, _noop, range(n), concurrency)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if done != n:
        raise RuntimeError(f"overhead: the batched queue answered {done} of {n} jobs")
    return elapsed, cpu


def _libpq_url(url: str) -> str:
    """``url`` without the query parameters that legion's store reads (libpq refuses them)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if not k.startswith(("pool_", "call_"))]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def measure(kind: str, n: int, concurrency: int, url: str) -> tuple[float, float]:
    """Seconds and CPU seconds of one path (``bare``, ``bare-io``, ``queue``, ``io`` or
    ``legion`` on ``url``); run in a child process by `run`."""
    if kind == "bare":
        return asyncio.run(bare_gather(n, concurrency))
    if kind == "bare-io":
        return asyncio.run(bare_io(n, concurrency))
    if kind == "queue":
        return asyncio.run(through_queue(url, n, concurrency))
    if kind == "io":
        return asyncio.run(through_legion(url, n, concurrency, io_wait))
    return asyncio.run(through_legion(url, n, concurrency))


async def run(
    opts: OverheadOptions | None = None,
    *,
    progress: Progress = quiet,
    workdir: Path | None = None,
) -> BenchResult:
    opts = opts or OverheadOptions()
    if opts.postgres:  # (before the SQLite runs: their figures were lost to a bad URL)
        async with fresh_schema(opts.postgres):
            pass
    paths = [BARE, QUEUE_SQLITE, SQLITE] + ([QUEUE_POSTGRES, POSTGRES] if opts.postgres else [])
    rates: dict[str, list[float]] = {p: [] for p in paths}
    cpu: dict[str, list[float]] = {p: [] for p in paths}

    io_makespans: list[float] = []
    bare_io_makespans: list[float] = []

    async def one(path: str, kind: str, url: str) -> None:
        elapsed, used = await in_child(measure, kind, opts.tasks, opts.concurrency, url)
        rates[path].append(opts.tasks / elapsed)
        cpu[path].append(used / opts.tasks)

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for attempt in range(opts.repeat):
            progress(f"overhead: round {attempt + 1}/{opts.repeat}, {opts.tasks:,} tasks each")
            await one(BARE, "bare", "")
            # The queue and legion alternate, in one order one round and the other the
            # next, so that neither always runs on a warmer or quieter machine.
            pairs = [(QUEUE_SQLITE, "queue"), (SQLITE, "legion")]
            for path, kind in pairs if attempt % 2 == 0 else pairs[::-1]:
                url = f"sqlite:///{Path(tmp) / f'overhead-{time.monotonic_ns()}.db'}"
                await one(path, kind, url)
            if opts.postgres:
                pairs = [(QUEUE_POSTGRES, "queue"), (POSTGRES, "legion")]
                for path, kind in pairs if attempt % 2 == 0 else pairs[::-1]:
                    async with fresh_schema(opts.postgres) as pg_url:
                        await one(path, kind, pg_url)
            url = f"sqlite:///{Path(tmp) / f'overhead-io-{time.monotonic_ns()}.db'}"
            elapsed, _ = await in_child(measure, "io", opts.io_tasks, opts.concurrency, url)
            io_makespans.append(elapsed)
            elapsed, _ = await in_child(measure, "bare-io", opts.io_tasks, opts.concurrency, "")
            bare_io_makespans.append(elapsed)
            progress(
                "  " + ", ".join(f"{name}: {values[-1]:,.0f}/s" for name, values in rates.items())
            )
    best = {name: max(values) for name, values in rates.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    # legion against the queue in each round (the two ran one after the other), and the
    # median of those: the best of each path could come from different rounds, one of
    # them a lucky one (the SQLite queue's rounds were seen to differ by 2.5x).
    rounds = {
        name: {
            "tasks_per_second": [a / b for a, b in zip(rates[name], rates[ref], strict=True)],
            "cpu_per_task": [a / b for a, b in zip(cpu[name], cpu[ref], strict=True)],
        }
        for name, ref in REFERENCE.items()
        if name in rates
    }
    ratios = {
        name: {what: statistics.median(values) for what, values in by.items()}
        for name, by in rounds.items()
    }

    def vs_queue(name: str) -> tuple[str, str]:
        if name not in ratios:
            return "", ""
        return (
            f"{ratios[name]['tasks_per_second']:.2f}x",
            f"{ratios[name]['cpu_per_task']:.2f}x",
        )

    table = Table(
        f"{opts.tasks:,} no-op tasks, concurrency {opts.concurrency:,}, best of {opts.repeat}",
        (
            "path",
            "tasks/s",
            "vs bare gather",
            "CPU per task (this process)",
            "tasks/s vs the queue (same round, median)",
            "CPU vs the queue (same round, median)",
        ),
        tuple(
            (
                name,
                fmt_num(value),
                f"{value / best[BARE]:.3f}",
                f"{best_cpu[name] * 1e6:,.1f} µs",
                *vs_queue(name),
            )
            for name, value in best.items()
        ),
    )
    io_best, bare_io_best = min(io_makespans), min(bare_io_makespans)
    io_table = Table(
        f"{opts.io_tasks:,} agents waiting {IO_SECONDS * 1000:.0f} ms on I/O, concurrency "
        f"{opts.concurrency:,}, best of {opts.repeat}",
        ("path", "makespan", "vs the floor", "vs bare gather"),
        (
            ("floor: rounds of 50 ms, nothing else", f"{opts.io_floor:.3f} s", "1.00x", ""),
            (
                f"{BARE}, the same waits",
                f"{bare_io_best:.3f} s",
                f"{bare_io_best / opts.io_floor:.2f}x",
                "1.00x",
            ),
            (
                SQLITE,
                f"{io_best:.3f} s",
                f"{io_best / opts.io_floor:.2f}x",
                f"{io_best / bare_io_best:.2f}x",
            ),
        ),
    )
    notes = [
        "legion: submit (batched insert), lease (batched), one asyncio task per instance, "
        "group-committed completions, results streamed back; bare: no durability at all.",
        "batched queue: the reference (legion/bench/batched_queue.py): the same batched "
        "insert, lease and group commit, with none of legion's features; the physical "
        "limit of a batched durable queue on this machine.",
        "CPU per task counts the measuring process only (event loop and store threads); "
        "the PostgreSQL server's own CPU is not included. Each run in a fresh process.",
        "vs the queue: legion's figure over the queue's in the same round (the two run one "
        "after the other, in turns first), the median over the rounds: "
        + "; ".join(
            f"{name} " + ", ".join(f"{r:.2f}" for r in by["tasks_per_second"])
            for name, by in rounds.items()
        )
        + ". The tasks/s and CPU columns are each path's best round.",
        _target(
            "legion on SQLite >= 0.5x the queue's tasks/s",
            ratios[SQLITE]["tasks_per_second"] >= 0.5,
        ),
        _target(
            "legion on SQLite <= 2x the queue's CPU per task",
            ratios[SQLITE]["cpu_per_task"] <= 2.0,
        ),
        _target("the 50 ms I/O agents <= 1.2x the floor", io_best <= 1.2 * opts.io_floor),
        "The I/O run's rounds follow one another: each task's cost to the event loop adds "
        "to the makespan. Bare asyncio over the same waits shows what this machine allows "
        f"({bare_io_best / opts.io_floor:.2f}x the floor); legion took "
        f"{io_best / bare_io_best:.2f}x that.",
    ]
    if opts.postgres:
        notes.append(
            _target(
                "legion on PostgreSQL >= 0.8x the queue's tasks/s",
                ratios[POSTGRES]["tasks_per_second"] >= 0.8,
            )
        )
    else:
        notes.append("PostgreSQL not measured (--sqlite-only).")
    return BenchResult(
        name=NAME,
        title="no-op agents through the durable path vs a bare batched queue and asyncio.gather",
        data={
            "options": asdict(opts),
            "tasks_per_second": {k: {"best": max(v), "all": v} for k, v in rates.items()},
            "cpu_us_per_task": {k: min(v) * 1e6 for k, v in cpu.items()},
            "legion_vs_bare": {k: v / best[BARE] for k, v in best.items()},
            "legion_vs_queue": ratios,
            "legion_vs_queue_rounds": rounds,
            "io": {
                "tasks": opts.io_tasks,
                "seconds_each": IO_SECONDS,
                "floor_s": opts.io_floor,
                "makespan_s": {"best": io_best, "all": io_makespans},
                "vs_floor": io_best / opts.io_floor,
                "bare_makespan_s": {"best": bare_io_best, "all": bare_io_makespans},
                "bare_vs_floor": bare_io_best / opts.io_floor,
                "vs_bare": io_best / bare_io_best,
            },
        },
        tables=[table, io_table],
        notes=notes,
        plots=[Plot("rates", _plot(best))],
    )


def _target(what: str, met: bool) -> str:
    return f"Target: {what}: " + ("met." if met else "NOT met.")


def _plot(best: dict[str, float]) -> Any:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        names = list(best)
        colors = {BARE: "#888", QUEUE_SQLITE: "#aed6f1", SQLITE: "#2471a3"}
        colors |= {QUEUE_POSTGRES: "#d2b4de", POSTGRES: "#7d3c98"}
        ax.barh(names, [best[n] for n in names], color=[colors[n] for n in names])
        ax.set_xlabel("no-op tasks per second (best run)")
        ax.set_title("overhead: the durable path vs a batched queue and asyncio.gather")
        ax.invert_yaxis()

    return draw
