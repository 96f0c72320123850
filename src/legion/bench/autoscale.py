"""``autoscale``: a burst of LLM-bound work against a rate-limited simulator, run by
``legion worker --autoscale MIN:MAX`` and by a fixed pool of MAX workers.

Each task makes ``calls`` chat calls one after another to a ``legion sim`` that allows
``rpm`` requests a minute (enforced per second) and answers after ``latency`` seconds;
each worker runs at most ``concurrency`` instances, so one worker cannot reach the
limit alone but a few can. Measured in the same run, each setup with a simulator and a
SQLite store of its own:

- **fixed pool**: ``legion worker --processes MAX``; timing starts once every worker has
  registered (their start-up is not counted);
- **autoscaled**: ``legion worker --autoscale MIN:MAX``; timing starts once the MIN
  workers have registered.

The burst is submitted at once; the run ends when the last task is done. Per setup:
makespan, worker-seconds (live worker processes sampled every ``sample`` seconds,
integrated over the makespan), the simulator's 429s, and workers and throughput over
time. Targets: the autoscaled makespan within 10 % of the fixed pool's, fewer
worker-seconds, no more 429s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import legion
from legion import codec
from legion.bench.results import BenchResult, Plot, Progress, Table, fmt_num, quiet

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "autoscale"
APP = "legion.bench.autoscale"


@dataclass(frozen=True, slots=True)
class AutoscaleOptions:
    tasks: int = 300
    calls: int = 3  # chat calls per task, one after another
    rpm: int = 1200  # the simulator's limit (and the workers' --rpm)
    latency: float = 0.3  # seconds per simulated completion
    minimum: int = 1
    maximum: int = 4
    concurrency: int = 4  # instances per worker process
    cooldown: float = 5.0  # the autoscaler's --cooldown
    sample: float = 0.5  # seconds between two samples of workers and throughput
    start_timeout: float = 120.0
    run_timeout: float = 900.0

    def __post_init__(self) -> None:
        if min(self.tasks, self.calls, self.rpm, self.concurrency, self.maximum) < 1:
            raise ValueError("tasks, calls, rpm, concurrency and the maximum must be >= 1")
        if not 0 <= self.minimum <= self.maximum:
            raise ValueError("the minimum must be between 0 and the maximum")


@legion.agent(name="bench-llm-chain", retries=3, timeout=600)
async def llm_chain(ctx: legion.Context, i: int, calls: int) -> int:
    """``calls`` chat calls, one after another (each recorded)."""
    for n in range(calls):
        await ctx.llm.chat([{"role": "user", "content": f"task {i} call {n}"}], max_tokens=8)
    return i


@dataclass(slots=True)
class Run:
    """What one setup measured."""

    label: str
    makespan: float = 0.0
    worker_seconds: float = 0.0
    rate_limited: int = 0
    requests: int = 0
    peak_workers: int = 0
    series: list[tuple[float, int, float]] = field(default_factory=list)  # (t, workers, tasks/s)


def _start_sim(opts: AutoscaleOptions, log: IO[bytes]) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable, "-m", "legion", "sim", "--port", "0", "--rpm", str(opts.rpm),
        "--window-seconds", "1", "--latency", str(opts.latency),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready at" not in line:
        proc.kill()
        raise RuntimeError(f"autoscale: the simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


def _sim_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=30) as r:
        return dict(codec.loads(r.read()))


def _start_workers(
    opts: AutoscaleOptions, store: str, sim_url: str, pool: list[str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "legion", "worker", "--app", APP, "--store", store,
        "--concurrency", str(opts.concurrency), "--llm", f"openai:sim-model@{sim_url}",
        "--rpm", str(opts.rpm), "--lease-seconds", "6", "--drain-timeout", "10", *pool,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute(sql).fetchone()[0])


async def _wait(
    check: Any, within: float, what: str, proc: subprocess.Popen[bytes], log_path: Path
) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        if proc.poll() is not None or time.monotonic() > deadline:
            text = await asyncio.to_thread(log_path.read_text, errors="replace")
            raise RuntimeError(f"autoscale: {what} did not happen:\n{text[-2000:]}")
        await asyncio.sleep(0.1)


async def _one(
    opts: AutoscaleOptions, label: str, pool: list[str], start: int, folder: Path, say: Progress
) -> Run:
    run = Run(label)
    db = folder / f"{label.split()[0]}.db"
    store = f"sqlite:///{db}"
    log_path = folder / f"{label.split()[0]}.log"
    log = await asyncio.to_thread(log_path.open, "wb")
    sim, sim_url = _start_sim(opts, log)
    try:
        async with legion.Runtime(store, worker=False) as rt:  # creates the tables
            workers = _start_workers(opts, store, sim_url, pool, log)
            try:
                live = "SELECT count(*) FROM workers"
                await _wait(
                    lambda: _count(db, live) >= start,
                    opts.start_timeout,
                    f"{start} workers registering",
                    workers,
                    log_path,
                )
                before = _sim_stats(sim_url)
                inputs = [{"i": i, "calls": opts.calls} for i in range(opts.tasks)]
                t0 = time.monotonic()
                await rt.submit_many(llm_chain, inputs)
                say(f"  {label}: {opts.tasks} tasks submitted")
                done_sql = "SELECT count(*) FROM tasks WHERE status IN ('succeeded','dead')"
                last_done, last_t = 0, 0.0
                while True:
                    await asyncio.sleep(opts.sample)
                    t = time.monotonic() - t0
                    done = await asyncio.to_thread(_count, db, done_sql)
                    n = await asyncio.to_thread(_count, db, live)
                    rate = (done - last_done) / (t - last_t) if t > last_t else 0.0
                    run.series.append((round(t, 2), n, round(rate, 2)))
                    run.worker_seconds += n * (t - last_t)
                    run.peak_workers = max(run.peak_workers, n)
                    last_done, last_t = done, t
                    if done >= opts.tasks:
                        break
                    if t > opts.run_timeout or workers.poll() is not None:
                        raise RuntimeError(f"autoscale ({label}): {done}/{opts.tasks} done")
                run.makespan = last_t
                after = _sim_stats(sim_url)
                run.rate_limited = after["rate_limited"] - before["rate_limited"]
                run.requests = after["requests_total"] - before["requests_total"]
                failed = await asyncio.to_thread(
                    _count, db, "SELECT count(*) FROM tasks WHERE status != 'succeeded'"
                )
                if failed:
                    raise RuntimeError(f"autoscale ({label}): {failed} tasks did not succeed")
            finally:
                if workers.poll() is None:
                    workers.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(workers.wait, 60)
                except subprocess.TimeoutExpired:
                    os.killpg(workers.pid, signal.SIGKILL)
                    await asyncio.to_thread(workers.wait)
    finally:
        sim.send_signal(signal.SIGTERM)
        await asyncio.to_thread(sim.communicate, None, 30)
        log.close()
    say(
        f"  {label}: {run.makespan:.1f} s, {run.worker_seconds:.0f} worker-seconds, "
        f"{run.rate_limited} 429s, peak {run.peak_workers} workers"
    )
    return run


async def run(
    opts: AutoscaleOptions | None = None,
    *,
    progress: Progress = quiet,
    workdir: Path | None = None,
) -> BenchResult:
    opts = opts or AutoscaleOptions()
    bounds = f"{opts.minimum}:{opts.maximum}"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        progress(f"autoscale: fixed pool of {opts.maximum} workers")
        fixed = await _one(
            opts,
            f"fixed pool of {opts.maximum}",
            ["--processes", str(opts.maximum)],
            opts.maximum,
            folder,
            progress,
        )
        progress(f"autoscale: --autoscale {bounds}")
        scaled = await _one(
            opts,
            f"autoscaled {bounds}",
            ["--autoscale", bounds, "--cooldown", str(opts.cooldown)],
            max(opts.minimum, 1),
            folder,
            progress,
        )
    ratio = scaled.makespan / fixed.makespan if fixed.makespan else None
    saved = 1 - scaled.worker_seconds / fixed.worker_seconds if fixed.worker_seconds else None
    ideal = opts.tasks * opts.calls / (opts.rpm / 60)
    rows = tuple(
        (
            r.label,
            fmt_num(r.makespan, 1, " s"),
            fmt_num(ideal / r.makespan if r.makespan else 0, 2),
            fmt_num(r.worker_seconds, 0),
            str(r.peak_workers),
            str(r.rate_limited),
            str(r.requests),
        )
        for r in (fixed, scaled)
    )
    met = (
        ratio is not None
        and ratio <= 1.10
        and scaled.worker_seconds < fixed.worker_seconds
        and scaled.rate_limited <= fixed.rate_limited
    )
    notes = [
        f"{opts.tasks} tasks x {opts.calls} chat calls one after another; the simulator allows "
        f"{opts.rpm} requests a minute (per second) and answers in {opts.latency:g} s; "
        f"{opts.concurrency} instances per worker; ideal makespan at the limit {ideal:.1f} s.",
        "worker-seconds: live worker processes (registered in the store), sampled every "
        f"{opts.sample:g} s and integrated over the makespan; the fixed pool's start-up is "
        "not counted, the autoscaler's scale-up is.",
        (
            f"makespan autoscaled / fixed: {ratio:.3f}; "
            f"worker-seconds saved: {100 * (saved or 0):.0f} %."
        )
        if ratio is not None
        else "no makespan measured",
        "Targets: makespan within 10 % of the fixed pool's, fewer worker-seconds, no more "
        "429s: " + ("met." if met else "NOT met."),
    ]
    return BenchResult(
        name=NAME,
        title="autoscaled workers vs a fixed pool, against a rate-limited provider",
        data={
            "options": asdict(opts),
            "runs": {r.label: asdict(r) for r in (fixed, scaled)},
            "makespan_ratio": ratio,
            "worker_seconds_saved": saved,
            "targets_met": met,
        },
        tables=[
            Table(
                f"burst of {opts.tasks} tasks, {opts.rpm} requests/min limit",
                (
                    "setup",
                    "makespan",
                    "of the limit",
                    "worker-seconds",
                    "peak workers",
                    "429s",
                    "requests",
                ),
                rows,
            )
        ],
        notes=notes,
        plots=[Plot("over-time", _plot(fixed, scaled))],
    )


def _plot(fixed: Run, scaled: Run) -> Any:
    def draw(fig: Figure) -> None:
        top, bottom = fig.subplots(2, 1, sharex=True)
        for r, color in ((fixed, "#7f8c8d"), (scaled, "#2471a3")):
            ts = [t for t, _, _ in r.series]
            top.step(ts, [n for _, n, _ in r.series], where="post", color=color, label=r.label)
            bottom.plot(ts, [x for _, _, x in r.series], color=color, label=r.label)
        top.set_ylabel("workers")
        bottom.set_ylabel("tasks/s")
        bottom.set_xlabel("seconds")
        top.legend()
        top.set_title("autoscale: workers and throughput over time")

    return draw
