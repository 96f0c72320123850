"""Memory held per *finished* task: does a task's memory return to baseline once it ends?

Runs tasks with a large input (``--input-kb``) and an agent timeout far longer than the
run (300 s, the default), through ``legion.Runtime`` on a SQLite file, consuming the
results without keeping them. Measures the Python heap with ``tracemalloc`` after a warm-up
(the baseline) and again after the tasks finished (after a garbage collection): what is
left, divided by the number of tasks, is what each finished task still holds.

Writes ``results/memory-per-task.json`` and ``results/memory-per-task.md``.

    python benchmarks/memory_per_task.py --tasks 500 --input-kb 100
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import tempfile
import tracemalloc
from pathlib import Path

import legion

RESULTS = Path(__file__).parent / "results"


@legion.agent(timeout=300, retries=0)
async def digest(ctx: legion.Context, blob: str) -> int:
    await ctx.step("size", len, blob)
    return len(blob)


async def run(tasks: int, input_kb: int, warmup: int) -> dict[str, float]:
    blob = "x" * (input_kb * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        async with legion.Runtime(f"sqlite:///{tmp}/m.db", concurrency=1000) as rt:
            async for _ in rt.map(digest, [blob + str(i) for i in range(warmup)]):
                pass
            gc.collect()
            baseline, _ = tracemalloc.get_traced_memory()
            async for _ in rt.map(digest, [blob + str(i) for i in range(tasks)]):
                pass
            gc.collect()
            after, peak = tracemalloc.get_traced_memory()
    return {
        "baseline_mb": baseline / 1e6,
        "after_mb": after / 1e6,
        "peak_mb": peak / 1e6,
        "held_per_task_kb": (after - baseline) / tasks / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--input-kb", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    tracemalloc.start()
    found = asyncio.run(run(args.tasks, args.input_kb, args.warmup))
    report = {
        "tasks": args.tasks,
        "input_kb": args.input_kb,
        "python": platform.python_version(),
        **{k: round(v, 2) for k, v in found.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory-per-task.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (
        f"# memory held per finished task: {args.tasks} tasks, {args.input_kb} KB input each, "
        "agent timeout 300 s\n\n"
        "| baseline (MB) | after the tasks ended (MB) | peak (MB) | held per finished task (KB) |\n"
        "|---:|---:|---:|---:|\n"
        f"| {report['baseline_mb']} | {report['after_mb']} | {report['peak_mb']} "
        f"| {report['held_per_task_kb']} |\n"
    )
    (args.out / "memory-per-task.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
