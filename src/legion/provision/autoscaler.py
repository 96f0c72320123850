"""``legion worker --autoscale MIN:MAX``: a supervisor that runs as many worker processes
as the scaling policy asks for.

Every ``interval`` seconds it reads a `legion.provision.policy.Demand` from the
store, asks `legion.provision.policy.decide` for the workers wanted, starts the
missing worker processes and stops the surplus. A stopped worker *drains*: it gets
SIGTERM, leases nothing more, lets its running tasks finish (up to ``--drain-timeout``,
after which they go back to the queue, no attempt charged) and exits, so scaling down
never loses a lease nor charges an attempt. The workers with the fewest tasks in flight
go first. Each decision (desired, running, why) is published in the store for
``legion status`` and the dashboard.

Like ``--processes``, the supervisor forwards SIGINT/SIGTERM to its workers and waits for
them to drain; a worker that crashes is simply not counted any more, and the next round
starts another if the work still asks for it. Worker processes get SIGTERM from the
kernel if the supervisor dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from rich.console import Console

from legion.errors import StoreError
from legion.provision.board import Board, _local, served
from legion.provision.exits import (
    EXIT_CODE_CHANGED,
    EXIT_FINAL,
    EXIT_STORE,
    SUPERVISOR_ENV,
    WHILE_DEPLOYING,
    WHY_FINAL,
    final,
)
from legion.provision.policy import (
    Decision,
    Demand,
    PolicyState,
    ScalingConfig,
    decide,
    parse_bounds,
)
from legion.provision.restarts import Restarts
from legion.store import Store
from legion.store.types import AutoscalerInfo, WorkerInfo

STRIPPED = ("--autoscale", "--cooldown", "--processes")  # supervisor-only options

SILENT_FOR = 10.0
"""Seconds a worker process may stay silent past its lease (no heartbeat, while the store
answers the supervisor) before the supervisor kills it."""

START_FOR = 120.0
"""Seconds a new worker process has to register (imports, opening the store)."""


@dataclass(frozen=True, slots=True)
class AutoscaleOptions:
    config: ScalingConfig
    concurrency: int
    interval: float = 1.0  # seconds between two decisions
    agents: tuple[str, ...] = ()
    """The agents its workers serve (their backlog is the fleet's: while none of its
    workers has registered, the queue of every other agent counted too, and a fleet of
    MIN 0 started and stopped a worker for tasks it would never run)."""


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line of one worker process: ``argv`` without the supervisor's options."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in STRIPPED:
            skip = True
        elif not any(arg.startswith(f"{name}=") for name in STRIPPED):
            out.append(arg)
    return out


class Autoscaler:
    """Starts and stops worker processes by the scaling policy; see the module's docstring."""

    def __init__(
        self,
        argv: Sequence[str],
        opts: AutoscaleOptions,
        console: Console,
        opener: Callable[[], Awaitable[Store | None]],
    ) -> None:
        self._opener = opener
        self._command = [sys.executable, "-m", "legion", "worker", *argv, "--worker-process"]
        self._env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        self._opts = opts
        self._console = console
        self._workers: dict[int, subprocess.Popen[bytes]] = {}  # counted: pid -> process
        self._draining: dict[int, subprocess.Popen[bytes]] = {}
        self._board = Board(concurrency=opts.concurrency)
        self._state = PolicyState(desired=0)
        self._stop = asyncio.Event()
        self._restarts = Restarts()
        self._changed_at: float | None = None  # a worker last exited for its agent's file
        self._restart_at = 0.0  # (monotonic) no worker starts before, after crashes
        # Its processes' heartbeats (see `_kill_the_silent`): since when each has been
        # silent while the store answered (monotonic), which ones registered, which ones
        # finished tasks (a crash after that is a task's doing, not a start that fails),
        # and which were killed for their silence.
        self._silent_since: dict[int, float] = {}
        self._registered: set[int] = set()
        self._progressed: set[int] = set()
        self._killed: set[int] = set()
        self._code = 0
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def run(self) -> int:
        """Scale until SIGINT/SIGTERM; then drain every worker and answer the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signalled, sig)
        cfg = self._opts.config
        self._console.print(
            f"legion worker: autoscaling {cfg.minimum} to {cfg.maximum} worker processes "
            f"(cool-down {cfg.cooldown:g} s)",
            highlight=False,
        )
        store = await self._open()
        try:
            if store is not None:
                await self._scale(store)
        finally:
            await self._drain_all()
            if store is not None:
                with contextlib.suppress(StoreError):
                    await store.remove_autoscaler(self.id)
                await store.aclose()
        return self._code

    def _signalled(self, sig: int) -> None:
        """The first stop signal drains every worker (`_drain_all`); another is passed
        on to each, which then gives its running tasks back at once."""
        if not self._stop.is_set():
            self._stop.set()
            return
        self._console.print(
            f"{signal.Signals(sig).name} again: the workers give their running tasks back now",
            style="yellow",
            highlight=False,
        )
        for proc in (*self._workers.values(), *self._draining.values()):
            if proc.poll() is None:
                proc.send_signal(sig)

    async def _open(self) -> Store | None:
        """The store, as a worker opens it (``opener``: waited for up to ``--store-wait``
        seconds, then exit 3, as a worker's), or nothing after a stop signal."""
        opening = asyncio.ensure_future(self._opener())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not opening.done():  # (a stop signal, or the command's own end)
                opening.cancel()
                await asyncio.gather(opening, return_exceptions=True)
        if opening.cancelled():
            return None
        store = opening.result()
        if store is None:
            self._code = EXIT_STORE
        return store

    async def _scale(self, store: Store) -> None:
        last_said: tuple[str, int] = ("", -1)
        while not self._stop.is_set():
            self._reap()
            try:
                demand = await self._board.read(
                    store,
                    ignore=self._draining,
                    own=self._workers.keys(),
                    serves=self._opts.agents,
                )
                self._kill_the_silent(self._board.registered, self._board.read_at)
                others = self._others(self._board.registered, self._board.read_at)
                decision, self._state = fleet_decision(
                    demand, self._opts.config, self._state, others, len(self._workers)
                )
                self._apply(decision, demand_in_flight(demand))
                await store.publish_autoscaler(self._info(decision, await store.now()))
            except StoreError as exc:
                if not exc.retryable:
                    raise
                # (silence is judged while the store answers: not across its outage)
                self._silent_since.clear()
                self._console.print(f"{_now()} the store failed: {exc}", style="yellow")
            else:
                said = _shape(decision.reason), decision.desired
                if said != last_said:
                    self._console.print(
                        f"{_now()} autoscale: desired {decision.desired}, running "
                        f"{self._running()}: {decision.reason}",
                        highlight=False,
                    )
                    last_said = said
            await self._sleep(self._opts.interval)

    def _running(self) -> int:
        """Its worker processes that run: not one that registered and has gone silent
        (stopped or hung, about to be killed: see `_kill_the_silent`)."""
        silent = self._registered.intersection(self._silent_since)
        return sum(1 for pid in self._workers if pid not in silent)

    def _others(self, registered: Sequence[WorkerInfo], now: float) -> int:
        """Live workers on the store that are not this fleet's and serve its agents (a
        silent one is not counted: the policy asks for one in its place)."""
        ours = served(
            (w for w in registered if _local(w) and w.pid in self._workers), self._opts.agents
        )
        others = 0
        for w in registered:
            if _local(w) and (w.pid in self._workers or w.pid in self._draining):
                continue
            if w.silent(now):
                continue
            agents = w.load.get("agents") or ()
            if ours is None or not agents or ours.intersection(agents):
                others += 1
        return others

    def _kill_the_silent(self, registered: Sequence[WorkerInfo], now: float) -> None:
        """Kill (SIGKILL) a worker process that lives but has sent no heartbeat for its
        lease and `SILENT_FOR` seconds more, while the store answered: stopped (SIGSTOP, a
        frozen container), hung, or its event loop blocked. Its leases go back to the
        queue after its lease as it is; alive, it was counted as a worker that runs and
        held back every scale-up as one still starting. One that never registered is given
        `START_FOR` seconds. A killed worker's place is taken at once (not a crash)."""
        heard = {w.pid: w for w in registered if _local(w) and not w.silent(now)}
        at = time.monotonic()
        for pid, proc in (*self._workers.items(), *self._draining.items()):
            worker = heard.get(pid)
            if worker is not None:
                self._registered.add(pid)
                self._silent_since.pop(pid, None)
                load = worker.load
                if int(load.get("succeeded", 0) or 0) + int(load.get("failed", 0) or 0):
                    self._progressed.add(pid)
                continue
            since = self._silent_since.setdefault(pid, at)
            grace = SILENT_FOR if pid in self._registered else START_FOR
            if at - since < grace or pid in self._killed or proc.poll() is not None:
                continue
            proc.kill()
            self._killed.add(pid)
            self._restarts.forget(pid)
            if self._workers.pop(pid, None) is not None:
                self._draining[pid] = proc  # (reaped there, its exit code not the fleet's)
            what = (
                f"sent no heartbeat for its lease and {grace:g} s more"
                if pid in self._registered
                else f"did not register in {grace:g} s"
            )
            self._console.print(
                f"{_now()} worker process {pid} {what} while the store answered (stopped, "
                "hung, or its event loop blocked): killed with SIGKILL; another takes its "
                "place if the work asks for it",
                style="yellow",
                highlight=False,
            )

    def _apply(self, decision: Decision, in_flight: dict[int, int]) -> None:
        paused = time.monotonic() < self._restart_at  # (workers keep crashing: a pause)
        while len(self._workers) < decision.desired and not paused:
            # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
            # passes it on once (twice, a worker gives its running tasks back at once).
            proc = subprocess.Popen(self._command, env=self._env, process_group=0)
            self._workers[proc.pid] = proc
            self._restarts.started(proc.pid)
        surplus = len(self._workers) - decision.desired
        if surplus > 0:
            # The idlest first; a process not registered yet holds nothing.
            order = sorted(self._workers, key=lambda pid: (in_flight.get(pid, 0), -pid))
            for pid in order[:surplus]:
                proc = self._workers.pop(pid)
                proc.send_signal(signal.SIGTERM)
                self._draining[pid] = proc

    def _reap(self) -> None:
        crashed = False  # (workers that crash together, an OOM kill, count once)
        for pid, proc in list(self._workers.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self._workers[pid]
            if rc == EXIT_CODE_CHANGED:
                self._changed_at = time.monotonic()
            # (bad options, a spent budget: so would another; not a start that failed as
            # its agent's file was being replaced)
            if final(rc, self._changed_at, time.monotonic()):
                self._console.print(
                    f"worker process {pid} exited with {rc}{WHY_FINAL.get(rc, '')}: another would "
                    "stop the same way; stopping the fleet",
                    style="red",
                    highlight=False,
                )
                self._code = max(self._code, rc)
                self._stop.set()
                continue
            # The fleet's crash streak: each crash in a row holds back starts longer; one
            # after the worker finished tasks (a task that brings its process down) ends it.
            if crashed:
                self._restarts.forget(pid)
                pause = 0.0
            else:
                crashed = True
                pause = self._restarts.crashed(
                    pid, streak="fleet", progressed=pid in self._progressed
                )
                self._restart_at = time.monotonic() + pause
            later = f" (none starts for {pause:g} s: workers keep crashing)" if pause else ""
            why = WHILE_DEPLOYING if rc == EXIT_FINAL else ""
            self._console.print(
                f"worker process {pid} exited with {rc}{why}; the policy decides whether "
                f"another starts{later}",
                style="yellow",
                highlight=False,
            )
        for pid, proc in list(self._draining.items()):
            rc = proc.poll()
            if rc is not None:
                del self._draining[pid]
                self._restarts.forget(pid)
                if rc != 0:
                    self._code = max(self._code, rc)
        alive = self._workers.keys() | self._draining.keys()
        for known in (self._registered, self._progressed, self._killed):
            known &= alive
        for pid in self._silent_since.keys() - alive:
            del self._silent_since[pid]

    async def _drain_all(self) -> None:
        everyone = {**self._workers, **self._draining}
        for proc in everyone.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # Popen has nothing to await: look every 50 ms (drains take seconds).
        while any(proc.poll() is None for proc in everyone.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for proc in everyone.values():
            if proc.returncode not in (0, None):
                self._code = max(self._code, proc.returncode)
        self._workers.clear()
        self._draining.clear()

    def _info(self, decision: Decision, now: float) -> AutoscalerInfo:
        cfg = self._opts.config
        return AutoscalerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            at=now,
            desired=decision.desired,
            running=self._running(),
            minimum=cfg.minimum,
            maximum=cfg.maximum if cfg.maximum is not None else -1,
            reason=decision.reason,
        )

    async def _sleep(self, seconds: float) -> None:
        # (`asyncio.timeout`, not `wait_for`: on Python 3.11 that drops a cancel that
        # comes as its wait ends)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()


def fleet_decision(
    demand: Demand,
    config: ScalingConfig,
    state: PolicyState,
    others: int,
    mine: int | None = None,
) -> tuple[Decision, PolicyState]:
    """This fleet's share of what ``demand`` asks for, with ``others`` live workers of other
    fleets (another machine's autoscaler, a plain worker) serving the same agents: the
    policy decides for the whole pool, within this fleet's bounds moved up by theirs, and
    this fleet runs the rest. (Each autoscaler provisioned the whole demand: two on one
    store ran twice the workers the work asked for.)

    A share that falls below the ``mine`` workers this fleet runs because the others grew
    waits for the cool-down, as any scale-down does: stopped at once, each fleet's start
    lowered the other's share, and two fleets started and stopped 40 workers in 100 s,
    never reaching what the work asked for. Nor does it grow because the others shrank
    while the work asks for no more than runs."""
    if not others:
        return decide(demand, config, dataclasses.replace(state, share_low_since=None))
    own_minimum = config.minimum
    config = dataclasses.replace(
        config,
        minimum=config.minimum + others,
        maximum=None if config.maximum is None else config.maximum + others,
    )
    pooled, state = decide(demand, config, state)
    reason = f"{pooled.reason} (of them {others} in other fleets)"
    desired = pooled.desired - others
    since = None
    if mine is not None and desired > max(mine, own_minimum) and pooled.wanted <= pooled.running:
        # The others shrank, the work asks for no more than runs: their drained workers
        # are not this fleet's to replace (it started some at idle, the others' cool-down
        # ending, and stopped them after its own); its own minimum it keeps.
        desired = max(mine, own_minimum)
    if mine is not None and desired < mine:
        since = state.share_low_since if state.share_low_since is not None else demand.at
        if demand.at - since < config.cooldown:
            desired = mine
            reason = (
                f"held at {mine} for the cool-down ({demand.at - since:.0f} of "
                f"{config.cooldown:g} s): other fleets grew ({reason})"
            )
        else:
            since = None
    share = Decision(
        desired,
        max(0, pooled.running - others),
        max(0, pooled.wanted - others),
        reason,
    )
    return share, dataclasses.replace(state, share_low_since=since)


def _shape(reason: str) -> str:
    """A decision's reason without its numbers: a line is logged when this changes (or
    the desired workers do), not each second that a count in it moves."""
    return _NUMBERS.sub("#", reason)


_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


def _now() -> str:
    """The time of day a supervisor's line is printed at, as workers' log lines have it."""
    return time.strftime("%H:%M:%S")


def demand_in_flight(demand: Demand) -> dict[int, int]:
    """In-flight tasks per worker pid (``host:pid:nonce`` ids), for choosing whom to stop."""
    out: dict[int, int] = {}
    for w in demand.workers:
        parts = w.id.split(":")
        if len(parts) >= 3 and parts[-2].isdigit():
            out[int(parts[-2])] = w.in_flight
    return out


def run_autoscaler(
    argv: Sequence[str],
    bounds: str,
    cooldown: float,
    concurrency: int,
    *,
    console: Console,
    opener: Callable[[], Awaitable[Store | None]],
    agents: Sequence[str] = (),
) -> int:
    """Run the autoscaling supervisor (``--autoscale MIN:MAX``) until SIGINT/SIGTERM; answer
    the exit code. ``opener`` opens the store (or answers None: it never answered).
    ``console``: one line per event. Bad bounds raise ValueError."""
    low, high = parse_bounds(bounds)
    config = ScalingConfig(minimum=low, maximum=high, cooldown=cooldown)
    opts = AutoscaleOptions(config=config, concurrency=concurrency, agents=tuple(agents))
    return asyncio.run(Autoscaler(worker_argv(argv), opts, console, opener).run())
