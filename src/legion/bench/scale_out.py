"""``scale-out``: one vs two worker processes on PostgreSQL, on a CPU-bound step mix.

Each task runs three recorded steps of pure-Python CPU work (``work`` iterations each,
a few milliseconds), so one process is bound by its one core and a second process can
use the second core. Measured in the same run:

- **SQLite, one process**: a `legion.Runtime` with its worker, in this process;
- **PostgreSQL, 1 worker process** and **2 worker processes**: ``legion worker --store
  URL --app legion.bench.scale_out`` subprocesses serve a fresh schema; this process
  only submits (a `legion.Runtime` with ``worker=False``) and follows the results.
  Timing starts once every worker has registered in the store, so process start-up is
  not counted.

Speed-up = makespan with one worker process / makespan with two. On a 2-core machine the
submitting process and the PostgreSQL server share the cores with the workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import legion
from legion.bench.postgres import fresh_schema
from legion.bench.results import BenchResult, Plot, Progress, Table, fmt_num, quiet
from legion.store import redact_url

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "scale-out"
APP = "legion.bench.scale_out"


@dataclass(frozen=True, slots=True)
class ScaleOutOptions:
    tasks: int = 1000
    work: int = 100_000
    """Iterations of CPU work per step (three steps a task)."""
    postgres: str = "postgresql://postgres@127.0.0.1/test"
    processes: tuple[int, ...] = (1, 2)
    concurrency: int = 16
    """Instances per worker process (CPU-bound: a few keep the core busy)."""
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.work < 1 or not self.processes or min(self.processes) < 1:
            raise ValueError("tasks, work and processes must be >= 1")


def burn(iterations: int, seed: int) -> int:
    """Pure-Python CPU work: holds the GIL, as parsing, scoring or templating do."""
    acc = seed
    for i in range(iterations):
        acc = (acc * 31 + i) % 1_000_003
    return acc


@legion.agent(name="bench-cpu-mix", retries=1, timeout=600)
async def cpu_mix(ctx: legion.Context, i: int, work: int) -> int:
    """Three CPU-bound steps, each recorded."""
    parsed = await ctx.step("parse", burn, work, i)
    scored = await ctx.step("score", burn, work, parsed)
    return int(await ctx.step("render", burn, work, scored))


async def _drive(
    rt: legion.Runtime, opts: ScaleOutOptions, progress: Progress, label: str
) -> float:
    t0 = time.perf_counter()
    done = failed = 0
    async for result in rt.map(cpu_mix, [{"i": i, "work": opts.work} for i in range(opts.tasks)]):
        done += 1
        failed += not result.ok
        if done % max(1, opts.tasks // 5) == 0:
            progress(f"  {label}: {done}/{opts.tasks} tasks, {time.perf_counter() - t0:.1f} s")
    if failed:
        raise RuntimeError(f"scale-out ({label}): {failed} of {opts.tasks} tasks failed")
    return time.perf_counter() - t0


async def _sqlite(opts: ScaleOutOptions, folder: Path, progress: Progress) -> float:
    url = f"sqlite:///{folder / 'scale-out.db'}"
    async with legion.Runtime(url, concurrency=opts.concurrency) as rt:
        return await _drive(rt, opts, progress, "SQLite, 1 process")


def _start_worker(url: str, opts: ScaleOutOptions, log: IO[bytes]) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "legion",
        "worker",
        "--app",
        APP,
        "--store",
        url,
        "--concurrency",
        str(opts.concurrency),
        "--drain-timeout",
        "5",
    ]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (the workers drain), then SIGKILL whatever is still there after 15 s."""
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            await asyncio.to_thread(w.wait, 15)
        except subprocess.TimeoutExpired:
            w.kill()
            await asyncio.to_thread(w.wait)


NEEDS_POSTGRES = "this scenario compares worker processes on PostgreSQL: --postgres names a server"


async def _postgres(
    opts: ScaleOutOptions, processes: int, folder: Path, progress: Progress
) -> float:
    label = f"PostgreSQL, {processes} worker process{'es' if processes > 1 else ''}"
    log_path = folder / f"workers-{processes}.log"
    log = await asyncio.to_thread(log_path.open, "wb")
    try:
        async with (
            fresh_schema(opts.postgres, hint=NEEDS_POSTGRES) as url,
            legion.Runtime(url, worker=False) as rt,  # creates the schema's tables
        ):
            workers = [_start_worker(url, opts, log) for _ in range(processes)]
            try:
                await _wait_registered(rt, workers, processes, opts.start_timeout, log_path)
                return await _drive(rt, opts, progress, label)
            finally:
                await _stop(workers)
    finally:
        log.close()


async def _wait_registered(
    rt: legion.Runtime,
    workers: list[subprocess.Popen[bytes]],
    expected: int,
    within: float,
    log_path: Path,
) -> None:
    """Wait until ``expected`` workers are registered in the store (polling it)."""
    deadline = time.monotonic() + within
    while len(await rt.store.workers()) < expected:
        dead = [w for w in workers if w.poll() is not None]
        if dead or time.monotonic() > deadline:
            text = await asyncio.to_thread(log_path.read_text, errors="replace")
            why = "exited" if dead else f"did not register within {within:g} s"
            raise RuntimeError(f"scale-out: a worker process {why}:\n{text[-2000:]}")
        await asyncio.sleep(0.1)


async def run(
    opts: ScaleOutOptions | None = None,
    *,
    progress: Progress = quiet,
    workdir: Path | None = None,
) -> BenchResult:
    opts = opts or ScaleOutOptions()
    makespans: dict[str, float] = {}
    async with fresh_schema(opts.postgres, hint=NEEDS_POSTGRES):  # (before the SQLite leg)
        pass
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        progress(f"scale-out: SQLite, one process, {opts.tasks:,} tasks")
        makespans["SQLite, 1 process"] = await _sqlite(opts, folder, progress)
        for n in opts.processes:
            progress(f"scale-out: PostgreSQL, {n} worker process(es)")
            makespans[f"PostgreSQL, {n} worker process{'es' if n > 1 else ''}"] = await _postgres(
                opts, n, folder, progress
            )
    one = next((v for k, v in makespans.items() if k.startswith("PostgreSQL, 1 ")), None)
    rows = []
    for name, seconds in makespans.items():
        speedup = one / seconds if one and name.startswith("PostgreSQL") else None
        rows.append(
            (
                name,
                fmt_num(seconds, 2, " s"),
                fmt_num(opts.tasks / seconds, 1),
                "-" if speedup is None else f"{speedup:.2f}x",
            )
        )
    two = next((v for k, v in makespans.items() if k.startswith("PostgreSQL, 2 ")), None)
    speedup_2 = one / two if one and two else None
    notes = [
        f"each task: three recorded steps of {opts.work:,} iterations of pure-Python "
        f"arithmetic; workers run with --concurrency {opts.concurrency}.",
        "speed-up: makespan with one PostgreSQL worker process / makespan with N; timing "
        "starts once every worker has registered.",
        f"{os.cpu_count()} CPUs here, shared by the workers, the submitting process and the "
        "PostgreSQL server.",
    ]
    if speedup_2 is not None:
        notes.append(
            f"Target: 2 processes >= 1.8x one: {speedup_2:.2f}x - "
            + ("met." if speedup_2 >= 1.8 else "NOT met.")
        )
    return BenchResult(
        name=NAME,
        title="worker processes on PostgreSQL, CPU-bound steps",
        data={
            "options": {**asdict(opts), "postgres": redact_url(opts.postgres)},
            "makespan_s": makespans,
            "speedup_2_vs_1": speedup_2,
        },
        tables=[
            Table(
                f"{opts.tasks:,} tasks x 3 CPU-bound steps",
                ("setup", "makespan", "tasks/s", "speed-up vs 1 worker"),
                tuple(rows),
            )
        ],
        notes=notes,
        plots=[Plot("throughput", _plot(makespans, opts))],
    )


def _plot(makespans: dict[str, float], opts: ScaleOutOptions) -> Any:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        names = list(makespans)
        ax.barh(names, [opts.tasks / makespans[n] for n in names], color="#2471a3")
        ax.set_xlabel("tasks per second")
        ax.set_title("scale-out: CPU-bound step mix")
        ax.invert_yaxis()

    return draw
