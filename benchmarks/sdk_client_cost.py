"""CPU cost per LLM call: the ``openai`` SDK through ``ctx.llm.openai()``, ``ctx.llm.chat``,
and the bare SDK.

Starts the provider simulator in a subprocess (its CPU is not counted), then sends
``--calls`` chat completions each way, ``--concurrency`` tasks (or bare callers) at once,
each making ``--per-task`` calls one after another, and measures this process's CPU
time per call (``time.process_time``, all threads) and the wall time:

* ``sdk-bare``: ``openai.AsyncOpenAI`` on its default transport, straight to the
  simulator, nothing recorded (the baseline of an agent outside legion).
* ``ctx.llm.chat``: legion agents calling ``ctx.llm.chat``: route, capacity, retries,
  each call a recorded step in a SQLite store, usage and cost on the task.
* ``ctx.llm.openai()``: the same agents calling the SDK from ``ctx.llm.openai()``: the
  SDK builds and parses its requests, legion's transport makes each a ``ctx.llm.chat``.

The difference between the last two is what the SDK adds on legion; between the first
and the last, what legion adds to an SDK agent (recording and the store included).

Run: ``python benchmarks/sdk_client_cost.py --calls 4000 --concurrency 200``; writes
``benchmarks/results/sdk-client-cost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

import legion
from legion import Runtime
from legion.llm import open_client

MODEL = "sim-model"
RESULTS = Path(__file__).resolve().parent / "results"


def _messages(i: int, j: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Say something about item {i}, part {j}."}]


@legion.agent(retries=0)
async def with_chat(ctx: legion.Context, job: list[int]) -> int:
    i, per_task = job
    for j in range(per_task):
        reply = await ctx.llm.chat(_messages(i, j), max_tokens=16)
        assert reply.text
    return per_task


@legion.agent(retries=0)
async def with_sdk(ctx: legion.Context, job: list[int]) -> int:
    i, per_task = job
    client = ctx.llm.openai()
    for j in range(per_task):
        reply = await client.chat.completions.create(
            model=MODEL, messages=_messages(i, j), max_tokens=16
        )
        assert reply.choices[0].message.content
    return per_task


async def _legion(agent: legion.Agent, url: str, tasks: int, per_task: int, conc: int) -> float:
    client = await open_client(f"openai:{MODEL}@{url}")
    with tempfile.TemporaryDirectory() as folder:
        async with (
            client,
            Runtime(f"sqlite:///{folder}/bench.db", llm=client, concurrency=conc) as rt,
        ):
            warm = [r async for r in rt.map(agent, [[-k - 1, 2] for k in range(10)])]
            assert all(r.ok for r in warm), warm[0].error
            gc.collect()
            cpu = time.process_time()
            results = [r async for r in rt.map(agent, [[i, per_task] for i in range(tasks)])]
            spent = time.process_time() - cpu
    assert all(r.ok for r in results), next(r.error for r in results if not r.ok)
    return spent


async def _bare(url: str, tasks: int, per_task: int, conc: int) -> float:
    async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as client:

        async def task(i: int, n: int) -> None:
            for j in range(n):
                reply = await client.chat.completions.create(
                    model=MODEL,
                    messages=_messages(i, j),  # type: ignore[arg-type]
                    max_tokens=16,
                )
                assert reply.choices[0].message.content

        gate = asyncio.Semaphore(conc)

        async def one(i: int, n: int) -> None:
            async with gate:
                await task(i, n)

        await asyncio.gather(*(one(-k - 1, 2) for k in range(10)))
        gc.collect()
        cpu = time.process_time()
        await asyncio.gather(*(one(i, per_task) for i in range(tasks)))
        return time.process_time() - cpu


async def _measure(way: str, url: str, calls: int, per_task: int, conc: int) -> dict[str, Any]:
    tasks = calls // per_task
    wall = time.perf_counter()
    if way == "sdk-bare":
        cpu = await _bare(url, tasks, per_task, conc)
    else:
        cpu = await _legion(with_chat if way == "ctx.llm.chat" else with_sdk, url, tasks,
                            per_task, conc)  # fmt: skip
    calls = tasks * per_task
    return {"way": way, "calls": calls, "cpu_ms_per_call": cpu / calls * 1000,
            "wall_s": time.perf_counter() - wall}  # fmt: skip


WAYS = ("sdk-bare", "ctx.llm.chat", "ctx.llm.openai()")


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "legion.sim", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        match = re.search(r"(http://\S+/v1)$", line.strip())
        if match is None:
            raise SystemExit(f"simulator did not start: {line!r}")
        rows = []
        for _ in range(args.repeat):
            for way in WAYS:
                row = await _measure(way, match[1], args.calls, args.per_task, args.concurrency)
                print(f"{way:<18} {row['cpu_ms_per_call']:>8.3f} ms/call {row['wall_s']:>7.2f} s",
                      flush=True)  # fmt: skip
                rows.append(row)
    finally:
        server.terminate()
        await server.wait()
    best = {way: min(r["cpu_ms_per_call"] for r in rows if r["way"] == way) for way in WAYS}
    return {
        "settings": {**vars(args), "out": args.out.name},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load": os.getloadavg()[0],
            "openai": openai.__version__,
        },
        "runs": rows,
        "best_cpu_ms_per_call": best,
        "ratios": {
            "ctx.llm.openai() / ctx.llm.chat": best["ctx.llm.openai()"] / best["ctx.llm.chat"],
            "ctx.llm.openai() / sdk-bare": best["ctx.llm.openai()"] / best["sdk-bare"],
            "ctx.llm.chat / sdk-bare": best["ctx.llm.chat"] / best["sdk-bare"],
        },
    }


def _markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# CPU per LLM call: ctx.llm.openai() vs ctx.llm.chat vs the bare SDK",
        "",
        f"{s['calls']} calls each way, {s['concurrency']} tasks at once, {s['per_task']} calls "
        f"per task, simulator in another process; best of {s['repeat']} runs "
        f"({report['machine']['cpus']} CPUs, load {report['machine']['load']:.1f}, openai "
        f"{report['machine']['openai']}). `python benchmarks/sdk_client_cost.py`.",
        "",
        "| way | CPU ms/call | vs ctx.llm.chat |",
        "|---|---:|---:|",
    ]
    best = report["best_cpu_ms_per_call"]
    for way in WAYS:
        lines.append(f"| {way} | {best[way]:.3f} | {best[way] / best['ctx.llm.chat']:.2f}x |")
    lines += [
        "",
        "ctx.llm.chat and ctx.llm.openai() include legion's work per call: capacity, "
        "retries, recording each call as a step in SQLite, usage and cost; sdk-bare records "
        "nothing.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--per-task", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "sdk-client-cost.json")
    args = parser.parse_args()
    report = asyncio.run(_main(args))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
