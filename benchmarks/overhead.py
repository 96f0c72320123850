"""Orchestration overhead: a no-op agent through legion's full durable path.

Compares, in the same run and process:

- ``asyncio.gather`` + a semaphore over the same no-op coroutine (no durability at all);
- ``legion`` on a SQLite file: submit (batched insert), lease (batched), run one asyncio
  task per instance, group-commit the completions, stream the results back.

Writes ``results/overhead.json`` and ``results/overhead.md``.

    python benchmarks/overhead.py --tasks 50000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import legion

RESULTS = Path(__file__).parent / "results"


@legion.agent(retries=0)
async def noop(ctx: legion.Context, i: int) -> int:
    return i


async def _noop(i: int) -> int:
    return i


async def bare_gather(n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with sem:
            return await _noop(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


async def legion_sqlite(
    n: int, concurrency: int, folder: Path, *, watchdog: bool = True
) -> tuple[float, float]:
    url = f"sqlite:///{folder / f'overhead-{time.monotonic_ns()}.db'}"
    async with legion.Runtime(url, concurrency=concurrency, watchdog=watchdog) as rt:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        done = 0
        async for r in rt.map(noop, range(n)):
            done += r.ok
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    if done != n:
        raise SystemExit(f"only {done}/{n} tasks succeeded")
    return elapsed, cpu


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: dict[str, list[float]] = {
        "asyncio.gather + semaphore": [],
        "legion, SQLite file": [],
        "legion, SQLite file, no watchdog": [],
    }
    cpu_per_task: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            rows["asyncio.gather + semaphore"].append(
                args.tasks / await bare_gather(args.tasks, args.concurrency)
            )
            elapsed, cpu = await legion_sqlite(args.tasks, args.concurrency, Path(tmp))
            rows["legion, SQLite file"].append(args.tasks / elapsed)
            cpu_per_task.append(cpu / args.tasks * 1e6)
            elapsed, _ = await legion_sqlite(
                args.tasks, args.concurrency, Path(tmp), watchdog=False
            )
            rows["legion, SQLite file, no watchdog"].append(args.tasks / elapsed)

    best = {name: max(v) for name, v in rows.items()}
    baseline = best["asyncio.gather + semaphore"]
    result = {
        "benchmark": "overhead",
        "tasks": args.tasks,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "platform": platform.platform(),
        },
        "tasks_per_second": {name: {"best": max(v), "all": v} for name, v in rows.items()},
        "legion_cpu_us_per_task": min(cpu_per_task),
        "legion_vs_bare_ratio": best["legion, SQLite file"] / baseline,
        # The event-loop watchdog and task tracking (async pitfalls): what they cost.
        "watchdog_overhead": 1
        - best["legion, SQLite file"] / best["legion, SQLite file, no watchdog"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# overhead: {args.tasks} no-op tasks, concurrency {args.concurrency}, "
        f"best of {args.repeat}",
        "",
        "| path | tasks/s | vs bare gather |",
        "|---|---:|---:|",
    ]
    for name, value in best.items():
        lines.append(f"| {name} | {value:,.0f} | {value / baseline:.3f} |")
    lines += [
        "",
        f"legion CPU per task: {result['legion_cpu_us_per_task']:.1f} µs "
        "(event loop + store thread)",
        f"watchdog + task tracking overhead: {result['watchdog_overhead'] * 100:.1f} % "
        "(target < 5 %)",
        "",
    ]
    (args.out / "overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    asyncio.run(main())
