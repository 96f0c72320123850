"""The reference batched queue alone: N no-op jobs through it, on SQLite (and PostgreSQL).

The queue itself lives in ``legion/bench/batched_queue.py`` (so that ``legion bench
overhead`` can measure legion next to it from any install); this script runs it on its
own and prints jobs per second and CPU per job.

    python benchmarks/batched_queue.py --jobs 50000 [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from legion.bench import batched_queue


async def _noop(x: int) -> int:
    return x


async def _measure(kind: str, target: str, jobs: int, concurrency: int) -> None:
    cpu0, t0 = time.process_time(), time.perf_counter()
    if kind == "sqlite":
        done = await batched_queue.run_sqlite(target, _noop, range(jobs), concurrency)
    else:
        done = await batched_queue.run_postgres(target, _noop, range(jobs), concurrency)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rate, per_job = done / elapsed, cpu / jobs * 1e6
    print(f"{kind}: {done:,} jobs, {rate:,.0f} jobs/s, {per_job:.1f} µs CPU a job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument(
        "--postgres", help="a PostgreSQL URL whose current schema is free for a jobs table"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "queue.db")
        asyncio.run(_measure("sqlite", path, args.jobs, args.concurrency))
    if args.postgres:
        asyncio.run(_measure("postgres", args.postgres, args.jobs, args.concurrency))


if __name__ == "__main__":
    main()
