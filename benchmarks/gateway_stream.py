"""Streams through ``legion gateway``: time to the first piece and to the whole answer,
next to the same streams asked of the provider directly, in the same run.

Starts the provider simulator and a ``legion gateway`` in front of it (each in a
process of its own, on a SQLite store in a temporary folder), then asks ``--calls``
streamed chat completions one after another each way with the official ``openai`` SDK:

* ``direct``: straight to the simulator (the baseline: no legion).
* ``gateway``: through the gateway (route, capacity, retries, usage per key).
* ``gateway, recorded``: through the gateway with an ``X-Legion-Task`` header (each
  call recorded in the store once its stream ends).

The simulator generates ``--tokens-per-second`` tokens, so the whole answer takes a
while: a gateway that passes pieces on as they come has a first piece as early as the
provider's; one that waited for the whole answer would have its first piece when the
whole answer is there.

Run: ``python benchmarks/gateway_stream.py --calls 30``; writes
``benchmarks/results/gateway-stream.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

RESULTS = Path(__file__).resolve().parent / "results"
WAYS = ("direct", "gateway", "gateway, recorded")


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "legion", *args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    match = re.search(r"(http://\S+/v1)$", line.strip())
    if match is None:
        raise SystemExit(f"{args[0]} did not start: {line!r}")
    return proc, match[1]


async def _key(store: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "legion", "keys", "create", "--name", "bench", "--store", store,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out.decode().strip().splitlines()[-1]


async def _streams(client: openai.AsyncOpenAI, calls: int, tokens: int) -> list[dict[str, float]]:
    rows = []
    for i in range(calls):
        started = time.perf_counter()
        first = None
        stream = await client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": f"Say something about item {i}."}],
            max_tokens=tokens,
            stream=True,
        )
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        whole = time.perf_counter() - started
        assert first is not None
        rows.append({"first_ms": first * 1000, "whole_ms": whole * 1000})
    return rows


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="legion-bench-")
    store = f"sqlite:///{folder}/gateway.db"
    tokens = str(args.tokens)
    sim, sim_url = await _start("sim", "--port", "0", "--tokens-per-second",
                                str(args.tokens_per_second), "--min-output-tokens", tokens,
                                "--max-output-tokens", tokens)  # fmt: skip
    key = await _key(store)
    gateway, url = await _start("gateway", "--port", "0", "--store", store,
                                "--llm", f"openai:sim-model@{sim_url}")  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {}
    try:
        clients = {
            "direct": openai.AsyncOpenAI(base_url=sim_url, api_key="x", max_retries=0),
            "gateway": openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0),
            "gateway, recorded": openai.AsyncOpenAI(
                base_url=url, api_key=key, max_retries=0,
                default_headers={"X-Legion-Task": f"bench-{os.getpid()}"},
            ),
        }  # fmt: skip
        for way in WAYS:
            results[way] = await _streams(clients[way], args.calls, args.tokens)
            await clients[way].close()
    finally:
        for proc in (gateway, sim):
            proc.terminate()
            await proc.wait()
    median = {
        way: {
            "first_ms": statistics.median(r["first_ms"] for r in rows),
            "whole_ms": statistics.median(r["whole_ms"] for r in rows),
        }
        for way, rows in results.items()
    }
    return {
        "settings": {**vars(args), "out": args.out.name},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load": os.getloadavg()[0],
            "openai": openai.__version__,
        },
        "runs": results,
        "median": median,
        "ratios": {
            f"{way}: first piece / whole answer": m["first_ms"] / m["whole_ms"]
            for way, m in median.items()
        },
    }


def _markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Streams through legion gateway: first piece and whole answer",
        "",
        f"{s['calls']} streams one after another each way, {s['tokens']} tokens at "
        f"{s['tokens_per_second']:g} tokens/s from the simulator (another process), gateway "
        f"in another process on SQLite; medians ({report['machine']['cpus']} CPUs, load "
        f"{report['machine']['load']:.1f}). `python benchmarks/gateway_stream.py`.",
        "",
        "| way | first piece ms | whole answer ms | first / whole | whole vs direct |",
        "|---|---:|---:|---:|---:|",
    ]
    median = report["median"]
    for way in WAYS:
        m = median[way]
        lines.append(
            f"| {way} | {m['first_ms']:.1f} | {m['whole_ms']:.1f} | "
            f"{m['first_ms'] / m['whole_ms']:.3f} | "
            f"{m['whole_ms'] / median['direct']['whole_ms']:.2f}x |"
        )
    lines += [
        "",
        "A first piece well before the whole answer is a stream passed on as it comes.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--tokens-per-second", type=float, default=200.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "gateway-stream.json")
    args = parser.parse_args()
    report = asyncio.run(_main(args))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
