"""From parsed options to the runtime's parts, for ``legion run``, ``legion worker`` and
``legion serve``.

Each of the three parses its own flags into a `RuntimeOptions` (where state lives, the
worker's shape, the LLM routes, executors and budgets) and opens its parts here, in one
order: the LLM routes (``--llm``, ``--config`` or the simulator), the client over them
with this process's and each tenant's budgets, the executors, then the `Runtime` on the
store. A command that runs no worker in its process gets no client and no executors.
What the commands differ in is in their options, not in code of their own; a new part
of the runtime is wired once, here.

Also here: opening a store that may not answer yet (`open_store`), what SIGINT and
SIGTERM do to a running command (`StopSignals`) and waiting for the first reason to
stop (`until_first`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from legion import faults
from legion.agent import Agent
from legion.cli.limits import open_files_note
from legion.cli.llm_options import ExecutorOptions, LLMOptions, llm_config
from legion.cli.progress import error_text
from legion.errors import StoreError, StoreUnavailable
from legion.llm.budget import Budget, BudgetLimits
from legion.llm.client import LLMClient
from legion.llm.config import LLMConfig, build_client
from legion.run.runtime import Runtime
from legion.store import Store, store_from_url


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What ``legion run``, ``legion worker`` and ``legion serve`` have in common: the
    options of the runtime they run on. The defaults are `Runtime`'s own, so a command
    without a flag for one gets what the library would give."""

    store: str
    concurrency: int = 1000
    lease_seconds: float = 30.0
    llm: LLMOptions = field(default_factory=LLMOptions)
    worker: bool = True
    """Run tasks in this process; without, the command only submits and watches."""
    strict: bool = False
    executors: ExecutorOptions | None = field(default_factory=ExecutorOptions)
    """``None``: the command offers no executor (an agent runs in the event loop)."""
    budget: BudgetLimits = field(default_factory=BudgetLimits)
    """This process's LLM spend, in all."""
    tenant_budget: BudgetLimits = field(default_factory=BudgetLimits)
    """Each tenant's LLM spend, in all (what its tasks recorded before counts)."""
    drain_timeout: float = 30.0
    max_loop_lag: float = 0.5
    max_memory_mb: float | None = None
    offer: Mapping[str, float] = field(default_factory=dict)
    """Resources the worker offers (placement)."""
    lease_ahead: float = 0.2
    """The most tasks leased ahead of free slots, a share of ``concurrency``."""
    tenant_max_running: int | None = None
    """The most of one tenant's tasks of an agent running at once, on every worker."""


def llm_options(
    specs: Sequence[str] | None,
    rpm: int | None,
    tpm: int | None,
    max_in_flight: int | None,
    config: Path | None,
) -> LLMOptions:
    """``--llm`` (repeated), ``--rpm``, ``--tpm``, ``--max-in-flight`` and ``--config``."""
    return LLMOptions(tuple(specs or ()), rpm, tpm, max_in_flight, config)


async def open_llm(
    opts: RuntimeOptions, config: LLMConfig, *, earlier_spending: bool = False
) -> LLMClient:
    """The client over the routes of ``config`` (as `llm_config` gives them), with the
    budgets of ``opts``; close it with ``aclose()`` or ``async with``.
    ``earlier_spending``: the run's budget holds every call until it is told what earlier
    runs of the job spent (`Budget.spent_before`)."""
    budget = Budget(opts.budget) if opts.budget.any else None
    if budget is not None and earlier_spending:
        budget.count_earlier_first()
    return await build_client(
        config,
        budget=budget,
        tenant_budget=opts.tenant_budget if opts.tenant_budget.any else None,
    )


def build_runtime(
    opts: RuntimeOptions,
    *,
    store: Store | None = None,
    llm: LLMClient | None = None,
    agents: Sequence[Agent] = (),
) -> Runtime:
    """The `Runtime` of ``opts``, not yet open: on ``store`` when given (the caller's, kept
    open), otherwise on the URL of ``opts.store`` (the runtime's own)."""
    executors = opts.executors
    built = executors.build() if executors is not None and opts.worker else None
    if built is not None and executors is not None and executors.executor == "process":
        from legion.executors.process import ProcessExecutor  # (loaded by the build)

        pool = built["process"]
        if isinstance(pool, ProcessExecutor):
            _say_if_children_are_few(pool.processes, opts.concurrency)
    return Runtime(
        opts.store if store is None else store,
        concurrency=opts.concurrency,
        worker=opts.worker,
        agents=agents,
        lease_seconds=opts.lease_seconds,
        drain_timeout=opts.drain_timeout,
        llm=llm,
        executors=built,
        executor=executors.executor if executors is not None else None,
        max_loop_lag=opts.max_loop_lag,
        max_memory_mb=opts.max_memory_mb,
        strict=opts.strict,
        offer=opts.offer,
        lease_ahead=opts.lease_ahead,
        tenant_max_running=opts.tenant_max_running,
    )


def _say_if_children_are_few(children: int, concurrency: int) -> None:
    """Warn when ``--concurrency`` leases many more tasks than the process executor's
    ``children`` run (one instance each at a time): the rest wait, leased, for a child."""
    if concurrency > 4 * children:
        print(
            f"note: --executor process runs one instance per child process at a time "
            f"(--pool-size {children}): of the up to {concurrency} tasks this worker leases "
            f"(--concurrency), {children} run and the rest wait for a child. Give "
            "--concurrency close to --pool-size, or run I/O-bound agents on the default "
            "executor.",
            file=sys.stderr,
        )


@asynccontextmanager
async def open_runtime(
    opts: RuntimeOptions,
    *,
    store: Store | None = None,
    agents: Sequence[Agent] = (),
    on_routes: Callable[[str], None] | None = None,
    earlier_spending: bool = False,
) -> AsyncIterator[Runtime]:
    """Open the parts of ``opts`` in order and yield the open `Runtime` (its client is
    ``rt.llm``, ``None`` without a worker here); close them in reverse.

    ``on_routes`` hears, before the client is built, the line that says which LLM
    routes the worker uses and where they came from; ``earlier_spending``: see
    `open_llm`."""
    async with AsyncExitStack() as stack:
        llm = None
        if opts.worker:
            config, note = llm_config(opts.llm)
            if on_routes is not None:
                on_routes(note)
            short = open_files_note(opts.concurrency)
            if short is not None:
                print(short, file=sys.stderr)
            client = await open_llm(opts, config, earlier_spending=earlier_spending)
            llm = await stack.enter_async_context(client)
        yield await stack.enter_async_context(
            build_runtime(opts, store=store, llm=llm, agents=agents)
        )


async def open_store_unless_stopped(
    opts: RuntimeOptions, wait: float, stop: StopSignals, console: Console
) -> Store | None:
    """`open_store` for ``opts.store``, or ``None`` once ``stop`` is asked for (a
    supervisor's SIGTERM can come at any moment of a start) or the store never came."""
    opening = asyncio.ensure_future(
        open_store(opts.store, lease_seconds=opts.lease_seconds, wait=wait, console=console)
    )
    await until_first(opening, stop.wait())
    return None if opening.cancelled() else opening.result()


Started = list[bool]
"""Given to what a command runs on its store: it appends ``True`` once it has started
(a worker serving, a server listening)."""


async def worker_up(rt: Runtime) -> None:
    """Return once ``rt``'s local worker (if any) has started; raise what stopped it if
    it ended first (a store lost while it registered: `Runtime.open` returns then, and
    the error would surface only at the drain)."""
    worker = rt.worker
    if worker is None or worker.started.is_set():
        return
    await rt.drain()  # (raises the worker's error)
    raise StoreUnavailable("the worker stopped before it started")


async def run_on_store(
    opts: RuntimeOptions,
    wait: float,
    stop: StopSignals,
    console: Console,
    run: Callable[[Store, Started], Awaitable[int]],
    *,
    what: str,
) -> int:
    """Open the store (`open_store_unless_stopped`) and ``run`` on it; answer its exit
    code. The store lost before ``run`` has started (a database restarting between the
    open and the start: the pool's connections ended) is opened again, within ``wait``
    seconds as the first open is; lost after, or past ``wait``, it is `EXIT_STORE`."""
    from legion.provision.exits import EXIT_STORE

    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait
    pause = 0.5
    while True:
        store = await open_store_unless_stopped(
            opts, max(0.0, give_up - loop.time()), stop, console
        )
        if store is None:
            return 0 if stop.is_set() else EXIT_STORE
        if faults.ARMED:
            faults.hit("store-opened")
        started: Started = []
        try:
            return await run(store, started)
        except StoreError as exc:
            if not exc.retryable:
                raise
            if stop.is_set() and not started:
                return 0  # (stopped while it started, as while it waited for the store)
            if started or loop.time() >= give_up:
                console.print(error_text(f"the store failed: {exc}"))
                return EXIT_STORE
            why = " ".join(str(exc).split())
            console.print(
                f"the store failed while the {what} started: {why}; opening it again in "
                f"{pause:.1f}s",
                style="yellow",
                highlight=False,
            )
        finally:
            await store.aclose()
        await until_first(asyncio.sleep(pause), stop.wait())
        pause = min(pause * 2, 10.0)


async def open_store(
    url: str, *, lease_seconds: float, wait: float, console: Console
) -> Store | None:
    """The store at ``url``, opened; waits for an unavailable one up to ``wait`` seconds,
    trying again with a growing pause and saying so on ``console`` (``None`` if it never
    came). A store that refuses the caller (a bad URL, credentials) raises at once."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait
    pause = 0.5
    tries = 0
    while True:
        store = store_from_url(url, lease_seconds=lease_seconds)
        tries += 1
        try:
            await store.open()
        except asyncio.CancelledError:  # the command was stopped while it waited
            await store.aclose()
            raise
        except StoreError as exc:
            await store.aclose()
            if not exc.retryable:
                raise
            why = " ".join(str(exc).split())  # one line per try
            left = give_up - loop.time()
            if left <= 0:
                console.print(
                    error_text(
                        f"the store is still unavailable after {tries} tries ({wait:g}s): {why}"
                    )
                )
                return None
            pause = min(pause, left)
            console.print(
                f"the store is unavailable (try {tries}): {why}; trying again in "
                f"{pause:.1f}s (giving up in {left:.0f}s)",
                style="yellow",
                highlight=False,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)
            continue
        if tries > 1:
            console.print(f"the store answered after {tries} tries", highlight=False)
        return store


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM, handled in the running loop from the moment this is made (make
    it before the command opens its store, so a process the store can see always stops
    cleanly): the first calls ``first`` with the signal and sets the stop; the second gives
    the running tasks of the attached runtime back to the queue at once; the third exits at
    once, without waiting for the store (which may not be writable)."""

    def __init__(self, first: Callable[[signal.Signals], None]) -> None:
        self._first = first
        self._event = asyncio.Event()
        self._runtime: Runtime | None = None
        self._presses = 0
        self.received: signal.Signals | None = None
        """The first stop signal (``None`` before one came)."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)

    def attach(self, rt: Runtime) -> None:
        """The runtime whose running tasks a second signal releases."""
        self._runtime = rt

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def _on_signal(self, signum: int) -> None:
        self._presses += 1
        name = signal.Signals(signum).name
        if self._presses == 1:
            self.received = signal.Signals(signum)
            self._first(self.received)
            self._event.set()
        elif self._presses == 2:
            if self._runtime is not None and self._runtime.worker is not None:
                print(
                    f"{name} again: giving the running tasks back now (a third time exits at "
                    "once, without waiting for the store)",
                    file=sys.stderr,
                )
                self._runtime.worker.release_now()
        else:
            # The store cannot be written (its disk is full, it is away): the close waits
            # for the writes queued, for as long as it takes. A third stop does not.
            print(
                f"{name} a third time: exiting now, without waiting for the store; what it "
                "has not recorded runs again when the tasks are resumed",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)


def stop_signals(rt: Runtime, first: Callable[[signal.Signals], None]) -> StopSignals:
    """`StopSignals` for a runtime already open."""
    stop = StopSignals(first)
    stop.attach(rt)
    return stop


async def until_first(*waits: Awaitable[object]) -> None:
    """Wait until the first of ``waits`` ends (a stop signal, a fatal error, a spent
    budget...), then cancel the others and wait for them to end."""
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in futures:
            f.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
