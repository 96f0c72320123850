"""``legion run``: a JSONL file of inputs through an agent, resumably, with live progress."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from .. import codec
from ..agent import Agent
from ..diagnostics.summary import summarize
from ..inputs import InputLine, read_jsonl
from ..runtime import Runtime
from ..task import TaskResult, TaskStatus
from .keyed_lines import submit_lines
from .llm_options import ExecutorOptions, LLMOptions, llm_config
from .progress import Progress, RunTally


@dataclass(frozen=True, slots=True)
class RunOptions:
    agent: Agent
    input: Path
    output: Path | None
    store: str
    concurrency: int
    lease_seconds: float
    progress: bool
    llm: LLMOptions
    local_worker: bool = True
    strict: bool = False
    executors: ExecutorOptions = field(default_factory=ExecutorOptions)


@dataclass(slots=True)
class LineResult:
    line: InputLine
    result: TaskResult | None = None


async def run_file(opts: RunOptions, console: Console) -> int:
    """Run every line; write one output line per input line; answer the exit code."""
    lines = list(read_jsonl(opts.input, opts.agent.name))
    bad = [ln for ln in lines if ln.error is not None]
    good = [ln for ln in lines if ln.error is None]
    for ln in bad:
        console.print(f"[yellow]skipped[/] {opts.input}:{ln.line}: {ln.error}", highlight=False)
    tally = RunTally(total=len(lines), bad_lines=len(bad))
    by_id: dict[int, LineResult] = {}
    interrupted = False
    async with AsyncExitStack() as stack:
        llm = None
        if opts.local_worker:
            from ..llm.config import build_client

            config, llm_note = llm_config(opts.llm)
            console.print(llm_note, highlight=False)
            llm = await stack.enter_async_context(await build_client(config))
        else:
            console.print(
                "no local worker: tasks run on `legion worker` processes", highlight=False
            )
        rt = await stack.enter_async_context(
            Runtime(
                opts.store,
                concurrency=opts.concurrency,
                lease_seconds=opts.lease_seconds,
                llm=llm,
                worker=opts.local_worker,
                strict=opts.strict,
                executors=opts.executors.build() if opts.local_worker else None,
                executor=opts.executors.executor,
            )
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        _install_signals(loop, rt, stop, console)
        try:
            good, submitted, refused = await submit_lines(rt, opts.agent, good)
            for ln in refused:
                console.print(f"[red]refused[/] {opts.input}:{ln.line}: {ln.error}")
            bad.extend(refused)
            tally.bad_lines += len(refused)
            for ln, s in zip(good, submitted, strict=True):
                by_id[s.id] = LineResult(ln)
            resumed = {s.id for s in submitted if not s.created and s.status.terminal}
            with Progress(
                tally, agent=opts.agent.name, console=console, enabled=opts.progress, llm=llm
            ) as progress:
                interrupted = await _collect(rt, by_id, resumed, tally, progress, stop)
            if interrupted:
                await rt.drain()
                await _settle_unfinished(rt, by_id)
        finally:
            _remove_signals(loop)
        fatal = rt.fatal_error
        llm_line = progress.llm_line()

    results = sorted([*by_id.values(), *(LineResult(b) for b in bad)], key=lambda r: r.line.line)
    _write_output(results, opts.output)
    _print_summary(console, tally, results, interrupted and fatal is None)
    if llm_line:
        console.print(llm_line, highlight=False)
    if fatal is not None:
        console.print(f"[red]error:[/] stopped the run: {fatal}", highlight=False)
        return 2
    if interrupted:
        return 130
    return 0 if tally.not_succeeded == 0 else 1


async def _collect(
    rt: Runtime,
    by_id: dict[int, LineResult],
    resumed: set[int],
    tally: RunTally,
    progress: Progress,
    stop: asyncio.Event,
) -> bool:
    """Gather results until every task finished or a signal asked to stop; answer
    whether the run was interrupted."""

    async def consume() -> None:
        async for r in rt.results(list(by_id)):
            by_id[r.id].result = r
            tally.add(r, resumed=r.id in resumed)

    consumer = asyncio.ensure_future(consume())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not consumer.done():
            done, _ = await asyncio.wait(
                {consumer, stopping}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED
            )
            if stopping in done or rt.fatal_error is not None:
                return True
            await _refresh(rt, progress)
        consumer.result()  # an error while collecting is an error of the run
        await _refresh(rt, progress)
        return False
    finally:
        for f in (consumer, stopping):
            f.cancel()
        await asyncio.gather(consumer, stopping, return_exceptions=True)


async def _refresh(rt: Runtime, progress: Progress) -> None:
    if rt.worker is not None:
        progress.update(rt.statistics())
    elif progress.due():  # no local worker: the store says how many run elsewhere
        counts = await rt.store.counts()
        progress.update(None, running=counts.get(TaskStatus.RUNNING, 0))


async def _settle_unfinished(rt: Runtime, by_id: dict[int, LineResult]) -> None:
    """After an interrupted run, read where the unfinished tasks stand now."""
    open_ids = [i for i, r in by_id.items() if r.result is None]
    for info in await rt.store.get_many(open_ids):
        by_id[info.id].result = TaskResult.from_info(info)


def _install_signals(
    loop: asyncio.AbstractEventLoop, rt: Runtime, stop: asyncio.Event, console: Console
) -> None:
    presses = 0

    def on_signal(signum: int) -> None:
        nonlocal presses
        presses += 1
        worker = rt.worker
        if presses == 1:
            console.print(
                f"[yellow]{signal.Signals(signum).name}: finishing running tasks; nothing is lost "
                "(again to release them now; re-run the same command to resume)[/]"
            )
            stop.set()
            if worker is not None:
                worker.stop()
        elif worker is not None:
            worker.release_now()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)


def _dump_tasks() -> None:
    """SIGUSR1: print where every asyncio task of this process is waiting (for debugging)."""
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks ---", file=sys.stderr)
    for task in tasks:
        task.print_stack(limit=8, file=sys.stderr)


def _remove_signals(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        loop.remove_signal_handler(sig)


def output_record(r: LineResult) -> dict[str, Any]:
    """One line of the output file (stable fields: line, key, status, output | error)."""
    ln = r.line
    record: dict[str, Any] = {"line": ln.line, "key": ln.key}
    if ln.error is not None:
        record["status"] = str(TaskStatus.FAILED)
        record["error"] = {"type": "InputError", "message": ln.error}
        return record
    res = r.result
    if res is None:
        record["status"] = "unknown"
        return record
    record["id"] = res.id
    record["status"] = str(res.status)
    record["attempts"] = res.attempt
    if res.usage:
        record["usage"] = res.usage
    if res.status is TaskStatus.SUCCEEDED:
        record["output"] = res.output
    elif res.status.terminal or res.error is not None:
        record["error"] = (
            res.error.brief() if res.error else {"type": str(res.status), "message": ""}
        )
    return record


def _write_output(results: Iterable[LineResult], path: Path | None) -> None:
    if path is None:
        _write_lines(results, sys.stdout)
        sys.stdout.flush()
        return
    # Write beside the target and rename: a crash never leaves a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            _write_lines(results, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_lines(results: Iterable[LineResult], f: TextIO) -> None:
    for r in results:
        f.write(codec.dumps(output_record(r)).decode())
        f.write("\n")


def _print_summary(
    console: Console, tally: RunTally, results: list[LineResult], interrupted: bool
) -> None:
    counts = {s: n for s, n in tally.by_status.items() if n}
    parts = [f"{n} {s}" for s, n in counts.items()]
    if tally.bad_lines:
        parts.append(f"{tally.bad_lines} bad input lines")
    p50, p95 = tally.latency.quantile(0.5), tally.latency.quantile(0.95)
    lat = (
        f", p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
        if p50 is not None and p95 is not None
        else ""
    )
    head = "interrupted" if interrupted else "done"
    console.print(
        f"[bold]{head}[/]: {tally.done}/{tally.total} in {tally.elapsed:.1f} s "
        f"({tally.rate():.0f} tasks/s{lat}) - " + (", ".join(parts) or "nothing to do"),
        highlight=False,
    )
    _print_diagnostics(console, results)
    if tally.resumed:
        console.print(
            f"{tally.resumed} finished in an earlier run and were not run again", highlight=False
        )
    failures = [r for r in results if (r.result and not r.result.ok and r.result.error)]
    for r in failures[:5]:
        err = r.result.error if r.result else None
        if err is not None:
            console.print(
                f"  line {r.line.line}: {r.result.status if r.result else ''} "
                f"{err.type}: {err.message}",
                highlight=False,
            )
    if len(failures) > 5:
        console.print(
            f"  ... and {len(failures) - 5} more (see the output file or `legion status`)",
            highlight=False,
        )


def _print_diagnostics(console: Console, results: list[LineResult]) -> None:
    found = [d for r in results if r.result is not None for d in r.result.diagnostics]
    if not found:
        return
    groups = summarize(found)
    console.print(
        f"[yellow]async pitfalls[/] ({len(found)} findings; see `legion status --advice`):"
    )
    for group in groups[:8]:
        console.print(f"  {group.line()}", highlight=False, markup=False)
    if len(groups) > 8:
        console.print(f"  ... and {len(groups) - 8} more", highlight=False)
