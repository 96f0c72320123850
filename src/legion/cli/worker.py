"""``legion worker``: serve the agents of an app from a shared store until told to stop.

One process runs one worker (an event loop with up to ``--concurrency`` agent
instances). ``--processes N`` (or ``auto``: one per core) makes this process a small
supervisor of N worker processes: it forwards SIGINT/SIGTERM to them, and starts a
worker again when one dies unexpectedly, so a crash costs only the leases that worker
held (they return to the queue; see ``--lease-seconds``).

A worker whose store cannot be reached at start waits for it, trying again with a
growing pause (logged each time) for up to ``--store-wait`` seconds; a store that
refuses it (a bad URL, rejected credentials) stops it at once. Exit codes:

- 0: drained after SIGINT/SIGTERM;
- 2: stopped for a reason a restart will not fix (bad options, an error every task
  would meet);
- 3: the store stayed unavailable (the supervisor starts the worker again);
- 4: an agent froze the event loop past its timeout (see `legion.run.worker`; the
  supervisor starts the worker again);
- 5: the worker's LLM budget (``--max-cost``, ``--max-tokens``, ``--max-calls``) is
  spent: it drained (tasks that needed another call went back to the queue, with what
  they recorded) and is not started again;
- anything else: a crash (the supervisor starts the worker again).
"""

from __future__ import annotations

import ctypes
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from rich.console import Console

from legion.agent import Agent
from legion.cli.progress import error_text
from legion.cli.wiring import (
    STOP_SIGNALS,
    RuntimeOptions,
    Started,
    StopSignals,
    open_runtime,
    run_on_store,
    until_first,
    worker_up,
)
from legion.errors import AgentChanged, AgentLoadError, MemoryExceeded
from legion.loader import agents_in, load_agent, load_module
from legion.provision.exits import (
    EXIT_BUDGET,
    EXIT_CODE_CHANGED,
    EXIT_EXECUTOR,
    EXIT_FINAL,
    EXIT_MEMORY,
    EXIT_STORE,
    SUPERVISOR_ENV,
    WHILE_DEPLOYING,
    WHY_FINAL,
    final,
)
from legion.provision.restarts import Restarts
from legion.resources import satisfies
from legion.run.freeze import FROZE_EXIT_CODE
from legion.store import Store, redact_url

EXIT_FROZE = FROZE_EXIT_CODE


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    apps: tuple[str, ...]
    runtime: RuntimeOptions  # its budget: this process's LLM spend
    store_wait: float = 300.0  # seconds to wait for an unavailable store at start
    max_freezes: int = 3  # a task that freezes the event loop this often is dead


def load_agents(apps: tuple[str, ...]) -> list[Agent]:
    """Every agent defined at the top level of the given modules; ``FILE:NAME`` (or
    ``module:NAME``) names one, a plain ``async def`` too, as `legion run` takes it."""
    found: list[Agent] = []
    for app in apps:
        module_ref, sep, attr = app.rpartition(":")
        if sep and module_ref and attr.isidentifier():
            found.append(load_agent(app))
            continue
        module = load_module(app)
        agents = agents_in(module)
        if not agents:
            plain = [
                name
                for name, value in vars(module).items()
                if inspect.iscoroutinefunction(value) and not name.startswith("_")
            ]
            named = f", or name one: --app {app}:{plain[0]}" if plain else ""
            raise AgentLoadError(
                f"{app} defines no agent (decorate async functions with @legion.agent{named})"
            )
        found.extend(agents)
    return found


async def serve(opts: WorkerOptions, agents: list[Agent], console: Console) -> int:
    """Run one worker until SIGINT/SIGTERM; answer the exit code."""

    def draining(sig: signal.Signals) -> None:
        console.print(f"{sig.name}: draining (pid {os.getpid()})", highlight=False)

    # Stop signals are handled from here on: a worker stopped while it opens its store or
    # registers (a supervisor's SIGTERM can come at any moment) exits cleanly too.
    stop = StopSignals(draining)

    def serve_on(store: Store, started: Started) -> Awaitable[int]:
        return _serve(store, opts, agents, stop, console, started)

    return await run_on_store(opts.runtime, opts.store_wait, stop, console, serve_on, what="worker")


async def _serve(
    store: Store,
    opts: WorkerOptions,
    agents: list[Agent],
    stop: StopSignals,
    console: Console,
    started: Started,
) -> int:
    """Serve until stopped; ``started`` gets a ``True`` once the worker has started."""
    notes: list[str] = []
    async with open_runtime(opts.runtime, store=store, agents=agents, on_routes=notes.append) as rt:
        assert rt.worker is not None and rt.llm is not None
        await worker_up(rt)
        started.append(True)
        stop.attach(rt)
        budget = rt.llm.budgets.run
        console.print(
            f"legion worker {rt.worker.id} pid {os.getpid()}: serving "
            f"{', '.join(a.name for a in agents)} from {redact_url(opts.runtime.store)} "
            f"(concurrency {opts.runtime.concurrency}); {notes[0]}",
            highlight=False,
        )
        offer = opts.runtime.offer
        for agent in agents:
            needs = dict(agent.options.resources)
            if not satisfies(offer, needs):
                wanted = ",".join(f"{k}={v:g}" for k, v in needs.items())
                console.print(
                    f"note: agent {agent.name!r} needs {wanted}, which this worker's --offer "
                    "does not cover: it leases none of its tasks (they wait for a worker "
                    f"started with --offer {wanted})",
                    style="yellow",
                    highlight=False,
                )
        # An agent that freezes the loop past its timeout is recorded and the process
        # exits; so does a stop signal the frozen loop cannot handle. The loop's handlers
        # run in the loop; the guard hears of the signal in the signal handler itself.
        guard = rt.worker.exit_when_frozen(max_freezes=opts.max_freezes)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, _frame: guard.signalled(signum))
        spent = [] if budget is None else [budget.wait_exhausted()]
        await until_first(rt.worker.wait_fatal(), stop.wait(), *spent)
        await rt.drain()
        s = rt.worker.statistics()
        abandoned = f" ({s.abandoned} abandoned: their agents caught the stop)" * bool(s.abandoned)
        console.print(
            f"legion worker {rt.worker.id}: stopped after {s.succeeded} succeeded, "
            f"{s.failed + s.dead} failed, {s.retried} retried, {s.released} released"
            + f", {s.cancelled} cancelled" * bool(s.cancelled)
            + abandoned,
            highlight=False,
        )
        if rt.fatal_error is not None:
            console.print(error_text(f"stopped: {rt.fatal_error}"))
            # (a supervisor starts another, which loads the new code: a deploy)
            from legion.executors.errors import ExecutorLost  # (loaded: it ran)

            if isinstance(rt.fatal_error, ExecutorLost):
                return EXIT_EXECUTOR
            if isinstance(rt.fatal_error, MemoryExceeded):
                return EXIT_MEMORY
            return EXIT_CODE_CHANGED if isinstance(rt.fatal_error, AgentChanged) else EXIT_FINAL
        if budget is not None and budget.exhausted is not None and not stop.is_set():
            console.print(
                error_text(
                    f"stopped: LLM budget exceeded ({budget.exhausted}); the unfinished tasks "
                    "are queued with what they recorded, for a worker with more budget"
                )
            )
            return EXIT_BUDGET
    return 0


def follow_supervisor() -> bool:
    """Have the kernel send this supervised worker process SIGTERM (it drains: running
    tasks finish or go back to the queue) when its supervisor dies, even by SIGKILL, so no
    worker outlives the fleet it belongs to (Linux; elsewhere a no-op). Answers False when
    the supervisor died before this process could ask (it must not start at all)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    supervisor = os.environ.get(SUPERVISOR_ENV)
    return supervisor is None or os.getppid() == int(supervisor)


_PR_SET_PDEATHSIG = 1


def supervise(argv: list[str], processes: int, console: Console) -> int:
    """Run ``processes`` worker processes with ``argv``; restart those that crash, that
    gave up on the store, or that an agent froze."""
    command = [sys.executable, "-m", "legion", "worker", *argv, "--worker-process"]
    children: dict[int, subprocess.Popen[bytes]] = {}
    received: list[int] = []  # the signals forwarded so far
    stopping = False

    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}

    restarts = Restarts()
    due: dict[int, float] = {}  # slots whose crashed worker is replaced at that time
    changed_at: float | None = None  # when a worker last exited for its agent's file

    def start(slot: int) -> None:
        # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
        # passes it on once (twice, a worker gives its running tasks back at once).
        child = children[slot] = subprocess.Popen(command, env=env, process_group=0)
        restarts.started(slot)
        if received:  # a signal came while it was being started: it gets it too
            child.send_signal(received[-1])

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        received.append(signum)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for slot in range(processes):
        if stopping:  # signalled while starting them: start no more
            break
        start(slot)
    console.print(f"legion worker: supervising {processes} worker processes", highlight=False)
    code = 0
    while children or (due and not stopping):
        for slot, child in list(children.items()):
            rc = child.poll()
            if rc is None:
                continue
            del children[slot]
            # Drained, or stopped for a reason a restart won't fix. (A worker drains only
            # when told to: one that exits with 0 unasked was ended by an agent's code.)
            if stopping or final(rc, changed_at, time.monotonic()):
                code = max(code, rc)
                continue
            # It crashed: start another (after a pause that grows while it keeps crashing).
            pause = restarts.crashed(slot)
            why = UNASKED if rc == 0 else WHY_EXITED.get(rc, "")
            if rc == EXIT_FINAL:  # (not final: its agent's file changed moments ago)
                why = WHILE_DEPLOYING
            if rc == EXIT_CODE_CHANGED:
                changed_at = time.monotonic()
            later = f" in {pause:g} s (it keeps crashing)" if pause else ""
            console.print(
                f"worker process {child.pid} exited with {rc}{why}; starting another{later}",
                style="yellow",
                highlight=False,
            )
            due[slot] = time.monotonic() + pause
        for slot, at in list(due.items()):
            if stopping:
                due.clear()
            elif time.monotonic() >= at:
                del due[slot]
                start(slot)
        time.sleep(0.2)
    return code


UNASKED = " though nothing asked it to stop (an agent's os._exit(0)?)"

WHY_EXITED = {
    **WHY_FINAL,
    EXIT_STORE: " (the store stayed unavailable)",
    EXIT_FROZE: " (an agent froze its event loop)",
    EXIT_CODE_CHANGED: " (its agent's file changed: the new worker runs the new code)",
    EXIT_MEMORY: " (its memory stayed past --max-memory with no task running)",
}


def processes_from(value: str) -> int:
    """``--processes``: a count, or ``auto`` for one per core this process may use; at most
    `most_processes` (each process runs up to ``--concurrency`` instances already)."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    if value == "auto":
        return cores
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--processes takes a number or 'auto', not {value!r}") from None
    if n < 1:
        raise ValueError("--processes must be at least 1")
    if n > most_processes(cores):
        raise ValueError(
            f"--processes {n} is far more than this machine's {cores} cores can run (at most "
            f"{most_processes(cores)}); each worker process runs up to --concurrency "
            "instances at once: raise that instead, or start workers on more machines"
        )
    return n


def most_processes(cores: int) -> int:
    """The most worker processes one supervisor starts: 8 a core, and 32 at the least."""
    return max(32, 8 * cores)


def child_argv(argv: list[str]) -> list[str]:
    """The command line of this ``legion worker`` without its ``--processes`` option."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes=") and arg != "--worker-process":
            out.append(arg)
    return out
