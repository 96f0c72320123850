"""Two more hard cases of ``capacity``: a pool of two keys, and priority lanes.

- **two-keys**: one route listed twice (``--llm main=... --llm main=...``), one
  deployment per API key, against a simulator that limits each key on its own
  (``limits_per_key``) at half of ``rpm``: legion should reach the *sum* of the two
  limits with (almost) no 429s, each call going to the key where it starts soonest.
- **priority**: a batch of one-call tasks (priority 0; 10,000 in the full run) fills a
  route; meanwhile interactive one-call tasks (priority 10) arrive one every
  ``interactive_every`` seconds. Their latency (submit to result) is measured three
  ways: on the idle route (alone), beside the batch (lanes), and beside the batch at the
  batch's priority (no lanes: what a single queue gives). The p95 beside the batch over
  the p95 alone says whether the batch slows interactive work down. The simulator fails
  5 % of the calls, and a task whose call failed takes about twice as long (the call,
  then its retry): the p95 sits on that edge, so it is also given over the tasks whose
  calls all succeeded at once (``clean``), and as the time legion added to the provider's
  (``wait``: submit to result less the provider calls' time). The batch's throughput
  meanwhile (tasks finished per second while the interactive ones ran) says whether it
  starved.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import time
from pathlib import Path
from typing import Any

import legion
from legion.bench.capacity_runs import (
    _TASK,
    MAX_TOKENS,
    MODEL,
    ScenarioOptions,
    _figures,
    _messages,
    _PerTask,
    _Run,
    _sim,
    one_call,
    two_calls,
)
from legion.bench.recording import RecordingProvider
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.openai import OpenAIProvider
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest
from legion.sim import Simulator
from legion.task import TaskStatus

_KEYS = ("sk-bench-key-one", "sk-bench-key-two")


async def two_keys(opts: ScenarioOptions, folder: Path) -> dict[str, Any]:
    """The pool scenario's row (figures against the sum of the two keys' limits), with
    one key of the whole limit run alike for comparison."""
    pooled = await _pool_run(opts, folder, keys=2)
    single = await _pool_run(opts, folder, keys=1)
    pooled["one_key_of_the_sum"] = {
        k: single[k] for k in ("steady_pct_of_limit", "rate_limited_share", "makespan_s")
    }
    pooled["steady_ratio_two_keys_over_one"] = (pooled["steady_pct_of_limit"] or 0.0) / (
        single["steady_pct_of_limit"] or 1.0
    )
    return pooled


async def _pool_run(opts: ScenarioOptions, folder: Path, *, keys: int) -> dict[str, Any]:
    per_key = opts.rpm // keys
    sim_config = _sim(opts, per_key, limits_per_key=True)
    async with Simulator(sim_config) as sim:
        recorders = [
            RecordingProvider(OpenAIProvider(base_url=sim.base_url, api_key=key))
            for key in _KEYS[:keys]
        ]
        counting = [_PerTask(recorder) for recorder in recorders]
        routes = [
            Route(
                "default",
                provider,
                MODEL,
                Capacity(f"sim#{i}", rpm=per_key),
                timeout=30.0,
                deployment=f"default#{i}" if keys > 1 else "",
            )
            for i, provider in enumerate(counting, start=1)
        ]
        client = LLMClient(routes)
        url = f"sqlite:///{folder / f'two-keys-{time.monotonic_ns()}.db'}"
        statuses: collections.Counter[str] = collections.Counter()
        latencies: list[float] = []
        first_error = None
        origin = time.perf_counter()
        async with client, legion.Runtime(url, concurrency=1000, llm=client) as rt:
            t0 = time.perf_counter()
            async for result in rt.map(two_calls, [{"task": i} for i in range(opts.tasks)]):
                latencies.append(time.perf_counter() - t0)
                statuses[str(result.status)] += 1
                if not result.ok and first_error is None and result.error is not None:
                    first_error = f"{result.error.type}: {result.error.message}"
            makespan = time.perf_counter() - t0
        stats = sim.stats()
    calls: collections.Counter[int] = collections.Counter()
    for c in counting:
        calls.update(c.calls)
    run = _Run(
        makespan,
        dict(statuses),
        opts.tasks - len(latencies),
        latencies,
        [a for r in recorders for a in r.attempts],
        calls,
        origin,
        first_error,
    )
    served = client.statistics().routes["default"].served_by
    return {
        "limit_rpm": per_key * keys,
        "per_key_rpm": per_key,
        "tasks": opts.tasks,
        "served_by": dict(served),
        "rate_limited_by_key": {k: v.get("rate_limited", 0) for k, v in stats.by_key.items()},
        **_figures(run, per_key * keys, 2),
    }


@legion.agent(name="bench-interactive", retries=3, timeout=600)
async def interactive(ctx: legion.Context, task: int) -> int:
    """One LLM call, submitted at a higher priority."""
    return (await ctx.llm.chat(_messages(task), max_tokens=MAX_TOKENS)).usage.total


async def priority(opts: ScenarioOptions, folder: Path) -> dict[str, Any]:
    """The lanes scenario's row: interactive p50/p95 alone, beside the batch with lanes,
    and beside the batch at the same priority."""
    batch = opts.tasks * opts.batch_factor
    alone = await _interactive_run(opts, folder, batch=0, lane=10)
    lanes = await _interactive_run(opts, folder, batch=batch, lane=10)
    single = await _interactive_run(opts, folder, batch=batch, lane=0)
    return {
        "limit_rpm": opts.rpm,
        "batch_tasks": batch,
        "interactive_tasks": opts.interactive_tasks,
        "interactive_every_s": opts.interactive_every,
        "alone": alone,
        "lanes": lanes,
        "no_lanes": single,
        "p95_ratio_lanes_over_alone": lanes["p95_s"] / alone["p95_s"],
        "p95_ratio_no_lanes_over_alone": single["p95_s"] / alone["p95_s"],
        "clean_p95_ratio_lanes_over_alone": lanes["clean_p95_s"] / alone["clean_p95_s"],
        "clean_p95_ratio_no_lanes_over_alone": single["clean_p95_s"] / alone["clean_p95_s"],
    }


class _Timed:
    """The provider time and failed calls of each interactive task (read from the
    prompt), around a recorder."""

    def __init__(self, inner: RecordingProvider) -> None:
        self.inner = inner
        self.seconds: dict[int, float] = collections.defaultdict(float)
        self.failed: set[int] = set()

    @property
    def name(self) -> str:
        return self.inner.name

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        content = request.messages[1].get("content")
        found = _TASK.search(content) if isinstance(content, str) else None
        task = int(found.group(1)) if found is not None else _BATCH
        began = time.perf_counter()
        ok = False
        try:
            result = await self.inner.chat(request, timeout=timeout)
            ok = True
            return result
        finally:
            if task < _BATCH:
                self.seconds[task] += time.perf_counter() - began
                if not ok:
                    self.failed.add(task)

    async def aclose(self) -> None:
        await self.inner.aclose()


_BATCH = 100_000  # the batch's tasks are numbered from here, the interactive ones below


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.95) - 1)] if ordered else float("nan")


async def _interactive_run(
    opts: ScenarioOptions, folder: Path, *, batch: int, lane: int
) -> dict[str, Any]:
    sim = _sim(opts, opts.rpm)
    async with Simulator(sim) as simulator:
        recorder = RecordingProvider(OpenAIProvider(base_url=simulator.base_url))
        timed = _Timed(recorder)
        client = LLMClient(
            [Route("default", timed, MODEL, Capacity("sim", rpm=opts.rpm), timeout=30.0)]
        )
        url = f"sqlite:///{folder / f'priority-{time.monotonic_ns()}.db'}"
        async with client, legion.Runtime(url, concurrency=1000, llm=client) as rt:
            await rt.submit_many(one_call, [{"task": _BATCH + i} for i in range(batch)])
            await asyncio.sleep(opts.fill_seconds)  # the batch has filled the route
            before = (await rt.store.counts()).get(TaskStatus.SUCCEEDED, 0)
            began = time.perf_counter()

            async def one(i: int) -> tuple[int, float]:
                await asyncio.sleep(i * opts.interactive_every)
                t0 = time.perf_counter()
                submitted = await rt.submit(interactive, {"task": i}, priority=lane)
                await rt.result(submitted.id)
                return i, time.perf_counter() - t0

            runs = (one(i) for i in range(opts.interactive_tasks))
            measured = dict(await asyncio.gather(*runs))
            span = time.perf_counter() - began
            # The rest of the batch stays queued: closing drains the running instances.
            done = (await rt.store.counts()).get(TaskStatus.SUCCEEDED, 0) - before
    latencies = sorted(measured.values())
    clean = [s for i, s in measured.items() if i not in timed.failed]
    limited = sum(1 for a in recorder.attempts if not a.admitted)
    batch_done = done - opts.interactive_tasks
    return {
        "priority": lane,
        "batch_tasks": batch,
        "p50_s": statistics.median(latencies),
        "p95_s": _p95(latencies),
        "max_s": latencies[-1],
        "clean_tasks": len(clean),
        "clean_p95_s": _p95(clean),
        "wait_p95_s": _p95([s - timed.seconds[i] for i, s in measured.items()]),
        "rate_limited": limited,
        "attempts": len(recorder.attempts),
        "batch_done_meanwhile": batch_done,
        "batch_per_s_meanwhile": batch_done / span,
        "batch_share_of_limit": batch_done / span / (opts.rpm / 60.0),
    }
