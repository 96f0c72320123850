"""``legion run``: a JSONL file of inputs through an agent, resumably, with live progress."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.text import Text

from legion import codec
from legion.agent import Agent
from legion.cli.fleet_watch import OthersWatch, WorkerWatch
from legion.cli.keyed_lines import submit_lines
from legion.cli.llm_options import DEFAULT_CONFIG, llm_config
from legion.cli.output import OrderedLines, OutputFile, open_output
from legion.cli.progress import Progress, RunTally, rate_text
from legion.cli.wiring import (
    STOP_SIGNALS,
    RuntimeOptions,
    StopSignals,
    open_runtime,
    open_store,
    stop_signals,
    until_first,
)
from legion.diagnostics.report import Diagnostic, raised_at
from legion.diagnostics.summary import OVERLAP_NOTE, overlapping, summarize
from legion.errors import ConfigError, StoreError
from legion.inputs import InputLine, read_jsonl
from legion.llm.budget import Budget, BudgetLimits, Spend
from legion.resources import satisfies
from legion.run.runtime import Runtime
from legion.run.spending import tasks_spend
from legion.store import Store
from legion.task import TaskResult, TaskStatus


@dataclass(frozen=True, slots=True)
class RunOptions:
    agent: Agent
    input: Path
    output: Path | None
    progress: bool
    runtime: RuntimeOptions  # its worker is the local worker (--no-local-worker: none)
    peers: tuple[Agent, ...] = ()  # the other agents of its file: the local worker serves
    # them too, as a worker serving the file would, so that the children its tasks start
    # (ctx.spawn, ctx.map) run
    store_wait: float = 300.0  # seconds the store may stay silent mid-run (`watch_store`)


BUDGET_EXCEEDED = "budget_exceeded"
"""The status, in the output, of a task left unfinished because the run's budget is spent."""
EXIT_BUDGET = 3
EXIT_STORE_GONE = 5
SKIPPED_SHOWN = 20
"""The bad input lines said on the terminal, each (all of them are in the output)."""
STORE_LOOK_EVERY = 1.0
"""Seconds between two looks at the store while a run waits for it (`watch_store`)."""
WATCH_EVERY = 5.0
"""Seconds between two looks, without a local worker, for a worker serving the agent (a
worker heartbeats every 5 s at most)."""


@dataclass(slots=True)
class LineResult:
    line: InputLine
    result: TaskResult | None = None
    budget_exceeded: bool = False


@dataclass
class RunReport:
    """What the summary needs once the lines are written: the first failures and every
    async-pitfall finding (the outputs themselves are not kept)."""

    failures: list[tuple[int, TaskResult]] = field(default_factory=list)
    failed: int = 0
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add(self, line: int, result: TaskResult) -> None:
        self.diagnostics.extend(result.diagnostics)
        if not result.ok and result.error is not None:
            self.failed += 1
            if len(self.failures) < 5:
                self.failures.append((line, replace(result, output=None, diagnostics=())))


class Results:
    """Each line's record goes to the output, in input order, as soon as it can."""

    def __init__(self, lines: list[InputLine], out: OutputFile) -> None:
        self.writer = OrderedLines(out, [ln.line for ln in lines])
        self.report = RunReport()
        self.budget_exceeded = False  # the run stopped because its budget is spent
        # task id -> its line, or its lines (two lines with one "_key" are one task; a
        # list for each task of a 400,000-line run was 26 MB), until it ends
        self.open: dict[int, InputLine | list[InputLine]] = {}

    def expect(self, task_id: int, line: InputLine) -> None:
        had = self.open.setdefault(task_id, line)
        if had is not line:
            self.open[task_id] = [*had, line] if isinstance(had, list) else [had, line]

    def lines(self, task_id: int) -> list[InputLine]:
        """The lines of this task still waiting for its end."""
        had = self.open.get(task_id)
        return [] if had is None else had if isinstance(had, list) else [had]

    def finish(self, task_id: int, result: TaskResult | None) -> None:
        for line in self.lines(task_id):
            self.put(line, result)
        self.open.pop(task_id, None)

    def put(self, line: InputLine, result: TaskResult | None) -> None:
        if result is not None:
            self.report.add(line.line, result)
        record = output_record(LineResult(line, result, self.budget_exceeded))
        self.writer.put(line.line, codec.dumps(record) + b"\n")


UNREACHABLE_AFTER = 10.0
"""Seconds of refused connections after which a route that never answered stops the run
(`legion.errors.NothingListens`): a server not started, or a wrong port, failed every
task one by one over two minutes."""


async def run_file(opts: RunOptions, console: Console) -> int:
    """Run every line; write one output line per input line; answer the exit code."""
    lines = list(read_jsonl(opts.input, opts.agent.name))
    out = open_output(opts.output, keep=_kept_files(opts))
    if opts.progress and console.is_terminal and out.is_terminal():
        out.hold()  # the live display redraws this terminal: the lines come after it
    try:
        code = await _run_lines(opts, console, lines, out)
    except BaseException:
        out.abort()
        raise
    out.commit()
    return code


def _kept_files(opts: RunOptions) -> list[tuple[Path, str]]:
    """The files this run reads or keeps its state in, which its output must not replace."""
    kept = [] if str(opts.input) == "-" else [(opts.input, "the run's input file")]
    try:
        source = inspect.getsourcefile(opts.agent.fn)
    except TypeError:  # not defined in Python source
        source = None
    if source is not None:
        kept.append((Path(source), f"the code of agent {opts.agent.name!r}"))
        # The modules its code imported from beside it (a helper.py): the user's code too.
        here = os.path.dirname(os.path.abspath(source))
        for module in list(sys.modules.values()):
            found = getattr(module, "__file__", None)
            if isinstance(found, str) and os.path.dirname(os.path.abspath(found)) == here:
                kept.append((Path(found), f"the code of module {module.__name__!r}"))
    kept.append((opts.runtime.llm.config or DEFAULT_CONFIG, "the LLM config file"))
    store = opts.runtime.store
    db = store.removeprefix("sqlite:///")
    if store.startswith("sqlite:///") and db != ":memory:" and Path(db).name:
        # (A URL with no file name is refused with its reason when the store opens.)
        from legion.vectors.sqlite import vectors_path

        what = f"the store's database ({store})"
        for name in (db, vectors_path(db)):
            kept += [(Path(name + end), what) for end in ("", "-wal", "-shm", "-journal")]
    return kept


async def _run_lines(
    opts: RunOptions, console: Console, lines: list[InputLine], out: OutputFile
) -> int:
    bad = [ln for ln in lines if ln.error is not None]
    good = [ln for ln in lines if ln.error is None]
    sink = Results(lines, out)
    for n, ln in enumerate(bad):
        if n < SKIPPED_SHOWN:
            console.print(f"skipped {opts.input}:{ln.line}: {ln.error}", style="yellow")
        sink.put(ln, None)
    if len(bad) > SKIPPED_SHOWN:  # (a file of the wrong kind made one line each)
        console.print(
            f"... and {len(bad) - SKIPPED_SHOWN:,} more lines skipped (each with its error in "
            "the output)",
            style="yellow",
        )
    tally = RunTally(total=len(lines), bad_lines=len(bad))
    interrupted = False
    spent: Budget | None = None  # the watched budget that ended the run
    if not opts.runtime.worker:
        if opts.runtime.budget.any:
            raise ConfigError(
                "--max-cost/--max-tokens/--max-calls limit the calls of a local worker: "
                "give them to each `legion worker` with --no-local-worker"
            )
        console.print("no local worker: tasks run on `legion worker` processes")
    if opts.runtime.worker:
        _say_if_not_covered(opts, console)
        llm_config(opts.runtime.llm)  # (a bad --llm refused before the store is made)
    agents = (opts.agent, *opts.peers) if opts.runtime.worker else ()
    # A store that cannot serve yet (a database down or restarting, a server at its
    # max_connections while a fleet's workers fill it) is waited for, as a worker waits.
    store = await open_store(
        opts.runtime.store,
        lease_seconds=opts.runtime.lease_seconds,
        wait=opts.store_wait,
        console=console,
    )
    if store is None:
        return EXIT_STORE_GONE  # (nothing submitted: the same command starts it afresh)
    async with (
        contextlib.aclosing(store),
        # (entered before the runtime, left after: the runtime's close, its drain and
        # last writes, is watched too)
        watch_store(opts.store_wait, lambda: _store_gone(console, opts, sink, out)) as store_watch,
        open_runtime(
            opts.runtime, store=store, agents=agents, on_routes=console.print, earlier_spending=True
        ) as rt,
    ):
        store_watch.store = rt.store
        llm = rt.llm
        if llm is not None:  # (a run stops where nothing listens; a worker waits for it)
            llm.unreachable_after = UNREACHABLE_AFTER
        budget = None if llm is None else llm.budgets.run
        watched = [] if budget is None else [budget]  # the budgets whose end ends the run
        if llm is not None and opts.agent.options.budget is not None:
            limits = BudgetLimits(*opts.agent.options.budget)  # the agent's own, watched too
            unpriced = llm.unpriced() if limits.max_cost is not None else []
            if unpriced:  # (refused now: every task was parked, told to raise the limit)
                raise ConfigError(
                    f"agent {opts.agent.name!r} has max_cost, which needs a price for every "
                    f"route, and model {unpriced[0].model!r} (route {unpriced[0].name!r}) has "
                    "none: set input_price and output_price (USD per million tokens) in its "
                    "[llm.*] table"
                )
            watched.append(llm.budgets.agent(opts.agent.name, limits))
        stop = _install_signals(rt, console)
        try:
            began = await rt.store.now()
            good, submitted, refused = await submit_lines(rt, opts.agent, good)
            for ln in refused:
                console.print(f"refused {opts.input}:{ln.line}: {ln.error}", style="red")
                sink.put(ln, None)
            tally.bad_lines += len(refused)
            for ln, s in zip(good, submitted, strict=True):
                sink.expect(s.id, ln)
            # Ended when submitted again: in an earlier run, unless its last attempt began
            # since this run did (a task `legion retry` queued again, which the local worker
            # ran before the chunk of lines that names it was submitted).
            ended = {s.id for s in submitted if not s.created and s.status.terminal}
            resumed = Resumed(ended, began)
            if budget is not None:
                earlier = await _spent_before(rt, [s.id for s in submitted if not s.created])
                budget.spent_before(earlier)
            workers: WorkerWatch | OthersWatch | None = None
            if not opts.runtime.worker and len(ended) < len(submitted):
                workers = WorkerWatch(
                    rt.store, opts.agent.name, opts.runtime.store, console, every=WATCH_EVERY
                )
                await workers.check()  # (and as the results come: the last worker may go)
            elif budget is not None and rt.worker is not None and len(ended) < len(submitted):
                workers = OthersWatch(
                    rt.store, opts.agent.name, rt.worker.id, console, every=WATCH_EVERY
                )
            del good, submitted  # (what a run of many lines no longer needs: sink holds them)
            for watch in watched:
                if llm is not None:  # an agent's budget: what its tasks recorded so far
                    await llm.budgets.ready(watch)
                console.print(f"budget{_whose(watch)}: {_budget_line(watch)}")
            if isinstance(workers, OthersWatch):
                await workers.check()  # (and as the results come: one may start)
            with Progress(
                tally, agent=opts.agent.name, console=console, enabled=opts.progress, llm=llm
            ) as progress:
                interrupted = await _collect(
                    rt, sink, resumed, tally, progress, stop, watched, workers
                )
            spent = next((w for w in watched if w.exhausted is not None), None)
            if spent is not None and not stop.is_set():
                sink.budget_exceeded = True
            if interrupted:
                await rt.drain()
                await _settle_unfinished(rt, sink, tally, resumed)
        finally:
            _remove_signals()
        fatal = rt.fatal_error
        llm_line = progress.llm_line()

    for task_id in list(sink.open):  # not found in the store: say so, in its place
        tally.gone += len(sink.lines(task_id))
        sink.finish(task_id, None)
    sink.writer.close()
    out.commit()  # every line is written: the output is complete before the summary
    _print_summary(
        console, tally, sink.report, interrupted and fatal is None and not sink.budget_exceeded
    )
    if llm_line:
        console.print(llm_line)
    if fatal is not None:
        console.print(Text.assemble(("error:", "red"), f" stopped the run: {fatal}"))
        return 2
    if sink.budget_exceeded and spent is not None:
        console.print(
            Text.assemble(
                ("budget exceeded:", "yellow"),
                f" {spent.exhausted}; spent in all, the calls then in flight answered: "
                f"{_budget_line(spent)}. Unfinished tasks are "
                "kept with what they recorded: run the same command with a higher limit "
                "to continue.",
            )
        )
        return EXIT_BUDGET
    if interrupted:  # as a shell reports a command a signal ended: 130 (SIGINT), 143 (SIGTERM)
        return 128 + (stop.received or signal.SIGINT)
    return 0 if tally.not_succeeded == 0 else 1


@dataclass
class StoreWatch:
    """What `watch_store` looks at: the store, once it is open."""

    store: Store | None = None


@contextlib.asynccontextmanager
async def watch_store(
    wait: float, gone: Callable[[], None], every: float = STORE_LOOK_EVERY
) -> AsyncIterator[StoreWatch]:
    """While the block runs, look at the watch's store every ``every`` seconds (once it is
    set); call ``gone`` once it has answered nothing for ``wait`` seconds. (Every write of
    the run is retried while the store is away, as a worker's are: without this a run
    whose database went away for good never ended, a Ctrl-C included, its drain waiting
    on writes that could not be made.)"""
    watch = StoreWatch()
    ended = asyncio.Event()

    async def look() -> None:
        answered = time.monotonic()
        # (until the block ends, and not only until cancelled: on Python 3.11,
        # `asyncio.wait_for` answered a look that ended as the cancel came and dropped the
        # cancel, and this loop went on for ever, a run stopped by Ctrl-C with it, its
        # output never written: 1 in 4 Ctrl-Cs of a 100,000-line run)
        while not ended.is_set():
            try:
                if watch.store is not None:
                    async with asyncio.timeout(max(every, 5.0)):
                        await watch.store.now()
            except (StoreError, TimeoutError):
                if time.monotonic() - answered >= wait:
                    gone()
                    return
            else:
                answered = time.monotonic()
            await until_first(asyncio.sleep(every), ended.wait())

    looking = asyncio.ensure_future(look())
    try:
        yield watch
    finally:
        ended.set()
        looking.cancel()
        await asyncio.gather(looking, return_exceptions=True)


def _store_gone(console: Console, opts: RunOptions, sink: Results, out: OutputFile) -> NoReturn:
    """The store stayed silent for ``--store-wait``: say what is kept, and exit at once
    (what the run would still do, a drain and its writes, needs the store)."""
    kept = f" and the results written so far in {out.partial}" if out.partial else ""
    console.print(
        Text.assemble(
            ("error:", "red"),
            f" the store has not answered for {opts.store_wait:g} s (--store-wait): the run "
            f"stops. What finished is kept in the store{kept}; {len(sink.open)} task(s) "
            "had not finished. Run the same command again once the store answers: it goes "
            "on where this run stopped, and tasks that were running may run again.",
        )
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STORE_GONE)  # (no drain, no cleanup: both would wait on the store)


def _say_if_not_covered(opts: RunOptions, console: Console) -> None:
    """Say so when the agent needs resources (``resources=``) that the local worker does
    not offer: it leaves the tasks to a worker that does, and the run waits for one."""
    needs = dict(opts.agent.options.resources)
    if satisfies(opts.runtime.offer, needs):
        return
    wanted = ",".join(f"{k}={v:g}" for k, v in needs.items())
    console.print(
        f"agent {opts.agent.name!r} needs {wanted}, which this run's worker does not offer: "
        f"its tasks wait for a `legion worker --offer {wanted}` on this store (--offer "
        f"{wanted} runs them here)",
        style="yellow",
        highlight=False,
    )


@dataclass(frozen=True, slots=True)
class Resumed:
    """Which results of a run are of tasks that ended in an earlier run: those ended
    when this run submitted them again whose last attempt began before it (on the
    store's clock)."""

    ended: set[int]
    began: float

    def __call__(self, result: TaskResult) -> bool:
        if result.id not in self.ended:
            return False
        return result.started_at is None or result.started_at < self.began


async def _collect(
    rt: Runtime,
    sink: Results,
    resumed: Resumed,
    tally: RunTally,
    progress: Progress,
    stop: StopSignals,
    budgets: list[Budget] | None = None,
    workers: WorkerWatch | OthersWatch | None = None,
) -> bool:
    """Gather results until every task finished, a signal asked to stop or one of
    ``budgets`` is spent; answer whether the run was interrupted. ``workers``: says what
    other workers on the store do to the run (see `legion.cli.fleet_watch`)."""

    async def consume() -> None:
        async for r in rt.results(list(sink.open)):
            for _ in sink.lines(r.id):
                tally.add(r, resumed=resumed(r))
            sink.finish(r.id, r)

    consumer = asyncio.ensure_future(consume())
    stopping = asyncio.ensure_future(stop.wait())
    spent = asyncio.ensure_future(_any_exhausted(budgets or []))
    try:
        while not consumer.done():
            done, _ = await asyncio.wait(
                {consumer, stopping, spent}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED
            )
            if stopping in done or spent in done or rt.fatal_error is not None:
                return True
            await _refresh(rt, progress)
            if workers is not None:
                await workers.check()
        consumer.result()  # an error while collecting is an error of the run
        await _refresh(rt, progress)
        return False
    finally:
        for f in (consumer, stopping, spent):
            f.cancel()
        await asyncio.gather(consumer, stopping, spent, return_exceptions=True)


async def _any_exhausted(budgets: list[Budget]) -> None:
    """Return once one of ``budgets`` refuses calls (never, without any)."""
    if not budgets:
        await asyncio.Event().wait()
    await until_first(*(b.wait_exhausted() for b in budgets))


async def _refresh(rt: Runtime, progress: Progress) -> None:
    if progress.due():  # the store's counts: what waits, and what runs on other workers
        try:  # (the run's agent's: a fleet runs other agents' tasks too)
            counts = (await rt.store.counts_by_agent()).get(progress.agent, {})
        except StoreError:  # the store is away for a moment: the line waits, not the run
            counts = None
        if counts is not None:
            progress.waiting = counts.get(TaskStatus.WAITING, 0)
            if rt.worker is None:
                progress.update(None, running=counts.get(TaskStatus.RUNNING, 0))
    if rt.worker is not None:
        progress.update(rt.statistics())


async def _settle_unfinished(rt: Runtime, sink: Results, tally: RunTally, resumed: Resumed) -> None:
    """After an interrupted run, write where the unfinished tasks stand now; those that
    ended while the worker drained count in the summary as they do in the output (and
    those that ended in an earlier run as such)."""
    unfinished = list(sink.open)
    for start in range(0, len(unfinished), 5000):  # (a page at a time, as results are read)
        for info in await rt.store.get_many(unfinished[start : start + 5000]):
            result = TaskResult.from_info(info)
            if info.status.terminal:
                for _ in sink.lines(info.id):
                    tally.add(result, resumed=resumed(result))
            sink.finish(info.id, result)


async def _spent_before(rt: Runtime, task_ids: list[int]) -> Spend:
    """What earlier runs of these tasks spent (`legion.run.spending.task_spend`: a task
    whose last attempt never ended, killed with its calls in flight, counts the calls its
    steps recorded)."""
    return await tasks_spend(rt.store, task_ids)


def _whose(budget: Budget) -> str:
    return f" of agent {budget.who}" if budget.scope == "agent" else ""


def _budget_line(budget: Budget) -> str:
    spent, limits = budget.spent, budget.limits
    parts = []
    if limits.max_cost is not None:
        parts.append(f"${spent.cost:.4f} of ${limits.max_cost:g}")
    if limits.max_tokens is not None:
        parts.append(f"{spent.tokens:,} of {limits.max_tokens:,} tokens")
    if limits.max_calls is not None:
        parts.append(f"{spent.calls:,} of {limits.max_calls:,} calls")
    return ", ".join(parts)


def _install_signals(rt: Runtime, console: Console) -> StopSignals:
    """The run's stop (SIGINT, SIGTERM), and SIGUSR1 for a dump of its asyncio tasks."""

    def first(sig: signal.Signals) -> None:
        console.print(
            f"{sig.name}: finishing running tasks; nothing is lost "
            "(again to release them now; re-run the same command to resume)",
            style="yellow",
        )
        if rt.worker is not None:
            rt.worker.stop()

    stop = stop_signals(rt, first)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    if rt.worker is not None:
        # An agent that blocks the event loop past its timeout (a CPU-bound loop) freezes
        # the run, its stop signals included: the guard records the task dead (a rerun
        # would freeze again) and exits, and a stop signal the blocked loop cannot handle
        # gives the tasks back and exits (see `legion.run.freeze`). The signal handler
        # tells the guard; the loop's own handler still runs once the loop does.
        guard = rt.worker.exit_when_frozen(max_freezes=1, exit=_exit_frozen)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, _frame: guard.signalled(signum))
    return stop


def _exit_frozen(code: int) -> NoReturn:
    """(The watchdog's thread, the event loop blocked.) End the run at once, saying how to
    go on: what finished is in the store."""
    sys.stderr.write(
        "legion run: stopped with the event loop blocked; the tasks that finished are kept: "
        "re-run the same command to go on\n"
    )
    sys.stderr.flush()
    os._exit(code)


def _dump_tasks() -> None:
    """SIGUSR1: print where every asyncio task of this process is waiting (for debugging)."""
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks ---", file=sys.stderr)
    for task in tasks:
        task.print_stack(limit=8, file=sys.stderr)


def _remove_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in (*STOP_SIGNALS, signal.SIGUSR1):
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
        record["error"] = {
            "type": "NotFound",
            "message": "its task is no longer in the store (purged before this run read its "
            "end): run the same command again to run the line again",
        }
        return record
    record["id"] = res.id
    record["status"] = (
        BUDGET_EXCEEDED if r.budget_exceeded and not res.status.terminal else str(res.status)
    )
    record["attempts"] = res.attempt
    if res.usage:
        record["usage"] = res.usage
    if res.status is TaskStatus.SUCCEEDED:
        record["output"] = res.output
    elif res.status.terminal or res.error is not None:
        record["error"] = res.error.brief() if res.error else _no_error(res.status)
    elif record["status"] == BUDGET_EXCEEDED:
        # (one line, the task whose call met the limit, has its error; every other
        # unfinished line says why too: a consumer filtering on "error" missed them)
        record["error"] = {
            "type": "BudgetExceeded",
            "message": "not finished: the run stopped when its budget was spent; run it "
            "again with a higher limit to continue",
        }
    return record


def _no_error(status: TaskStatus) -> dict[str, str]:
    """The error of a task that ended without one of its own (a cancelled task)."""
    if status is TaskStatus.CANCELLED:
        return {"type": "Cancelled", "message": "cancelled before it finished"}
    return {"type": str(status).title(), "message": f"the task ended {status}"}


def _print_summary(console: Console, tally: RunTally, report: RunReport, interrupted: bool) -> None:
    counts = {s: n for s, n in tally.by_status.items() if n}
    parts = [f"{n} {s}" for s, n in counts.items()]
    if tally.bad_lines:
        parts.append(f"{tally.bad_lines} bad input lines")
    if tally.gone:
        parts.append(f"{tally.gone} no longer in the store (purged before their end was read)")
    if tally.total > tally.done:  # stopped by a signal or a budget: they wait in the store
        parts.append(f"{tally.total - tally.done} unfinished")
    p50, p95 = tally.latency.quantile(0.5), tally.latency.quantile(0.95)
    lat = (
        f", p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (last attempts)"
        if p50 is not None and p95 is not None
        else ""
    )
    head = "interrupted" if interrupted else "done"
    ran = tally.done - tally.resumed - tally.bad_lines - tally.gone
    # (a resumed run's rate is of the tasks it ran, not of those an earlier run finished)
    here = f"{ran} ran now: " if tally.resumed else ""
    console.print(
        Text.assemble(
            (head, "bold"),
            f": {tally.done}/{tally.total} in {tally.elapsed:.1f} s "
            f"({here}{rate_text(tally.rate())} tasks/s{lat}) - "
            + (", ".join(parts) or "nothing to do"),
        )
    )
    _print_diagnostics(console, report.diagnostics)
    if tally.resumed:
        console.print(f"{tally.resumed} finished in an earlier run and were not run again")
        retriable = tally.resumed_unsucceeded - tally.resumed_bad_input
        if retriable:
            console.print(
                f"  {retriable} of them did not succeed: `legion retry --failed "
                "--dead --cancelled` (with --store) queues them again for the next run"
            )
        if tally.resumed_bad_input:  # (a retry fails them the same way: the line is wrong)
            console.print(
                f"  {tally.resumed_bad_input} of them failed on their input (InputError): "
                "fix those lines; a fixed line is a new task"
            )
    for line, result in sorted(report.failures, key=lambda f: f[0]):
        if result.error is not None:
            at = raised_at(result.error.traceback)
            console.print(
                f"  line {line}: {result.status} {result.error.type}: {result.error.message}"
                + (f" (at {at})" if at else ""),
                highlight=False,
            )
    if report.failed > len(report.failures):
        console.print(
            f"  ... and {report.failed - len(report.failures)} more "
            "(see the output file or `legion status`)"
        )


def _print_diagnostics(console: Console, found: list[Diagnostic]) -> None:
    if not found:
        return
    groups = summarize(found)
    console.print(
        Text.assemble(
            ("async pitfalls", "yellow"),
            f" ({len(found)} finding{'s' if len(found) != 1 else ''}; see "
            "`legion status --advice`):",
        )
    )
    for group in groups[:8]:
        console.print(f"  {group.line()}")
    if len(groups) > 8:
        console.print(f"  ... and {len(groups) - 8} more")
    if overlapping(groups):
        console.print(f"  ({OVERLAP_NOTE})")
