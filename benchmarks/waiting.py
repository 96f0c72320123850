"""Waiting tasks cost no worker slots: throughput of other work next to 10,000 waiting tasks.

In the same run and process, alternately:

- **baseline**: a fresh SQLite store; ``--tasks`` no-op tasks through ``Runtime.map``;
- **with waiting**: a fresh SQLite store holding ``--waiting`` tasks suspended at
  ``ctx.wait_for`` (all ``waiting``, none in flight), then the same no-op tasks.

The ratio (with waiting / baseline) is the figure: 1.0 means the waiting tasks cost the
other work nothing. Writes ``results/waiting.json`` and ``results/waiting.md``.

    python benchmarks/waiting.py --tasks 20000 --waiting 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import legion

RESULTS = Path(__file__).parent / "results"


@legion.agent(retries=0)
async def noop(ctx: legion.Context, i: int) -> int:
    return i


@legion.agent(retries=0)
async def parked(ctx: legion.Context, i: int) -> Any:
    return await ctx.wait_for("never-sent")


async def _park(rt: legion.Runtime, n: int) -> float:
    """Submit ``n`` tasks that suspend at once; answer the seconds until all wait."""
    t0 = time.perf_counter()
    await rt.submit_many(parked, [{"i": i} for i in range(n)])
    while (await rt.store.counts()).get(legion.TaskStatus.WAITING, 0) < n:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return time.perf_counter() - t0


def _fresh_store(folder: Path, postgres: str | None) -> str:
    """A new, empty store: a SQLite file, or a schema of its own in ``postgres``."""
    if postgres is None:
        return f"sqlite:///{folder / f'waiting-{time.monotonic_ns()}.db'}"
    import psycopg

    schema = f"legion_bench_waiting_{time.monotonic_ns()}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[arg-type]
    sep = "&" if "?" in postgres else "?"
    return f"{postgres}{sep}options=-csearch_path%3D{schema}"


def _drop_store(url: str, postgres: str | None) -> None:
    if postgres is None:
        return
    import psycopg

    schema = url.rsplit("%3D", 1)[1]
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')  # type: ignore[arg-type]


async def one_run(
    folder: Path, tasks: int, waiting: int, concurrency: int, postgres: str | None = None
) -> dict[str, Any]:
    url = _fresh_store(folder, postgres)
    try:
        return await _measure(url, tasks, waiting, concurrency)
    finally:
        _drop_store(url, postgres)


async def _measure(url: str, tasks: int, waiting: int, concurrency: int) -> dict[str, Any]:
    async with legion.Runtime(url, concurrency=concurrency, agents=[noop, parked]) as rt:
        park_s = await _park(rt, waiting) if waiting else 0.0
        stats = rt.statistics()
        in_flight = stats.in_flight if stats is not None else 0
        t0 = time.perf_counter()
        done = 0
        async for r in rt.map(noop, range(tasks)):
            done += r.ok
        seconds = time.perf_counter() - t0
        counts = await rt.store.counts()
    assert done == tasks
    return {
        "waiting": waiting,
        "still_waiting": counts.get(legion.TaskStatus.WAITING, 0),
        "in_flight_while_waiting": in_flight,
        "park_seconds": round(park_s, 3),
        "seconds": round(seconds, 3),
        "tasks_per_s": round(tasks / seconds, 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "with_waiting": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _ in range(args.repeat):
            runs["baseline"].append(
                await one_run(folder, args.tasks, 0, args.concurrency, args.postgres)
            )
            runs["with_waiting"].append(
                await one_run(folder, args.tasks, args.waiting, args.concurrency, args.postgres)
            )
    base = statistics.median(r["tasks_per_s"] for r in runs["baseline"])
    with_waiting = statistics.median(r["tasks_per_s"] for r in runs["with_waiting"])
    return {
        "benchmark": "waiting",
        "command": f"python benchmarks/waiting.py --tasks {args.tasks} --waiting {args.waiting} "
        f"--repeat {args.repeat} --concurrency {args.concurrency}"
        + (" --postgres URL" if args.postgres else ""),
        "store": "PostgreSQL" if args.postgres else "SQLite file",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg()[0],
        },
        "tasks": args.tasks,
        "runs": runs,
        "baseline_tasks_per_s": base,
        "with_waiting_tasks_per_s": with_waiting,
        "ratio": round(with_waiting / base, 3),
    }


def table(result: dict[str, Any]) -> str:
    w = result["runs"]["with_waiting"][0]
    n = result["tasks"]
    store = result.get("store", "SQLite file")
    rows = [
        "| store | other work | waiting tasks | in flight while waiting | tasks/s (median) "
        "| ratio |",
        "|---|---|---|---|---|---|",
        f"| {store} | {n:,} no-op | 0 | 0 | {result['baseline_tasks_per_s']:,.0f} | 1.00 |",
        f"| {store} | {n:,} no-op | {w['waiting']:,} | {w['in_flight_while_waiting']} | "
        f"{result['with_waiting_tasks_per_s']:,.0f} | {result['ratio']:.2f} |",
    ]
    return (
        "# Waiting tasks and the throughput of other work\n\n"
        + "\n".join(rows)
        + f"\n\nCommand: `{result['command']}`; load {result['machine']['load']:.1f} on "
        f"{result['machine']['cpus']} CPUs. Runs alternate (baseline, with waiting) in one "
        "process; each uses a fresh store.\n"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--postgres", default=None, help="a PostgreSQL URL: run there (a schema per run)"
    )
    ns = parser.parse_args()
    found = asyncio.run(main(ns))
    ns.out.mkdir(parents=True, exist_ok=True)
    name = "waiting-postgres" if ns.postgres else "waiting"
    (ns.out / f"{name}.json").write_text(json.dumps(found, indent=2) + "\n")
    (ns.out / f"{name}.md").write_text(table(found))
    print(table(found))
