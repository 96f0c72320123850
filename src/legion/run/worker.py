"""``Worker``: leases tasks in batches, runs one instance per task, commits in batches.

Background loops, all owned by `Worker.run`:

- **lease**: takes as many ready tasks as there are free slots (global and per agent)
  and its LLM routes admit; while the routes are busy it still takes tasks of a raised
  priority, as far as their own lane at the routes has room (their calls go first);
- **journal**: group-commits step results, memory writes and completions;
- **heartbeat** and **reaper**: keep the worker's leases and take back those of dead
  workers (see `legion.run.upkeep`, the worker's base class).

Every write an instance makes is fenced by its lease (see `legion.journal.Journal`):
an instance whose lease was lost is stopped at its next write or heartbeat, and logged
once. A step starts only under leases the store confirmed within two heartbeat periods;
after a pause (SIGSTOP, a frozen loop) steps wait for the next heartbeat, which stops
what was lost or cancelled meanwhile.

A task taken back from a worker that stopped while running it among others runs apart
from all other work until it ends, in a group of at most half as many as it was lost
with; a group that loses its worker again is halved again, so a task that crashes its
worker each time ends up alone and is then charged for it, its neighbours never are. A
fleet restarted after a kill reruns what it had in flight in two groups, not one by
one. A worker whose leases were taken while it lived (cut off from the store, paused)
lets those tasks run with others again (`Store.absolve`) once it reaches the store.

Stopping (`stop`, SIGINT/SIGTERM in the CLI) drains: no new leases, running
instances get ``drain_timeout`` seconds to finish, the rest are released back to the
queue unfinished, and everything is committed before `run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
import os
import random
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from legion import gil, heap, identity
from legion.agent import Agent
from legion.clock import Clock, ForwardSteps, StoreTime, system_clock, within
from legion.context import llm_calls
from legion.diagnostics import tracking
from legion.diagnostics.report import agent_files, blocked_loop
from legion.diagnostics.watchdog import Block, Capture, LoopWatchdog
from legion.errors import ConfigError, MemoryExceeded, Permanent, StoreError
from legion.journal import Committed, Journal
from legion.run.ahead import Ahead, Held
from legion.run.freeze import FreezeGuard
from legion.run.route_meter import RouteMeter
from legion.run.runner import Instance, Services, StopReason, abandon, run_instance
from legion.run.upkeep import Upkeep, ended, rss_mb
from legion.stats import Counters, Statistics
from legion.store.base import Store
from legion.task import Completion, Lease, Outcome, TaskInfo
from legion.waiting.calls import CHILD_AGENTS

if TYPE_CHECKING:
    from legion.executors import Executor
    from legion.llm.client import LLMClient
    from legion.waiting.batch import BatchDesk

log = logging.getLogger("legion.worker")
tasks_log = logging.getLogger("legion.tasks")
"""Each failed attempt, once its end is written: a retry at INFO, a task that failed
for good (failed, dead) at WARNING, with ``task_id``, ``agent``, ``attempt`` and
``outcome`` attached (fields of a JSON log line)."""

pitfalls_log = logging.getLogger("legion.pitfalls")
"""Each async pitfall an attempt's diagnostics found (`legion.diagnostics`), at WARNING,
the first time this worker sees it at its place (kind and line): the rest are counted
in the store (``legion status --advice``). ``legion run`` says them in its summary
instead."""

_FAILURES = frozenset({Outcome.RETRY, Outcome.FAILED, Outcome.DEAD})
_PITFALLS_SAID = 1000  # places a worker remembers having logged (then it says no more)
_SHOWN = 300
"""Characters of an error's message a log line shows (the store keeps it whole)."""


def _log_failure(done: Completion) -> None:
    error = done.error
    why = "no error" if error is None else f"{error.type}: {error.message}"
    if len(why) > _SHOWN:
        why = why[:_SHOWN] + "..."
    fields = {
        "task_id": done.id,
        "agent": done.agent,
        "attempt": done.attempt,
        "outcome": done.outcome.value,
    }
    if done.outcome is Outcome.RETRY:
        after = max(0.0, done.not_before - done.finished_at)
        tasks_log.info(
            "task %d (%s): attempt %d failed, retried in %.1fs: %s",
            done.id,
            done.agent,
            done.attempt,
            after,
            why,
            extra=fields,
        )
    else:
        tasks_log.warning(
            "task %d (%s): %s after attempt %d: %s",
            done.id,
            done.agent,
            done.outcome.value,
            done.attempt,
            why,
            extra=fields,
        )


_QUIET = 0.05
"""The share of an agent's recent instances that made an LLM call below which the LLM
routes do not bound how many of its instances start (`Worker._quiet`)."""

SUSPECTS_POLL_BUSY = 4
"""A busy worker looks for a group of suspects to hold every this many poll intervals (an
idle one every interval)."""

START_SLICE = 256
"""Instances started per turn of the event loop. Each runs to its first await in the turn
after it starts, so a lease of 5,000 started at once held the loop for the whole batch
(0.5 s with one LLM call each, seconds on a busy machine): timers and I/O waited behind
it, and the worker, seeing its own loop lag past ``max_loop_lag``, stopped leasing for
about as long again."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    concurrency: int = 1000
    lease_seconds: float = 30.0
    # How long an idle worker waits before asking the store again (it is also woken at
    # once by submissions made in the same process).
    poll_interval: float = 0.5
    drain_timeout: float = 30.0
    # Seconds an instance has to end once stopped (its timeout, a cancel, a lost lease, a
    # release): one whose agent catches the cancellation and runs on is abandoned then -
    # its end written as the stop calls for, its slot freed, its code stopped (see
    # `legion.run.runner.abandon`).
    stop_grace: float = 10.0
    # Lease when at least this share of the slots is free, so leases come in batches.
    lease_batch_fraction: float = 0.1
    # Lease ahead of the free slots, at most this share of ``concurrency``: the tasks are
    # started the moment a slot frees, with no store round trip between one instance's end
    # and the next one's start. How many is measured (twice the instances that end during
    # a lease call; none for long-running agents: see `legion.run.ahead`). 0: never.
    lease_ahead: float = 0.2
    # Stop leasing while the event loop lags more than this (seconds, averaged over
    # about half a second) or the process's memory passes ``max_memory_mb``; resume
    # when it recovers. Running tasks go on either way.
    max_loop_lag: float = 0.5
    max_memory_mb: float | None = None
    # The event-loop watchdog reports a block longer than this (seconds).
    block_threshold: float = 0.1
    # Fail a task whose agent made a step or call it never awaited (else: report it).
    strict: bool = False
    # The event-loop watchdog and task-ownership tracking (see legion.diagnostics).
    watchdog: bool = True
    # Admission follows capacity: start new instances only while every LLM route's queue
    # of waiting calls would drain within this many seconds at the route's rate (Little's
    # law); ``concurrency`` stays the upper bound. ``None``: lease up to ``concurrency``.
    admission_horizon: float | None = 3.0
    # The resources this worker offers: it leases only tasks whose needs they cover.
    offer: Mapping[str, float] = field(default_factory=dict)
    # The most of one tenant's tasks of an agent running at once, on every worker (as the
    # store counts them): this worker leases none of a tenant's beyond it. ``None``: no cap.
    tenant_max_running: int | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.concurrency, int)
            or isinstance(self.concurrency, bool)
            or self.concurrency < 1
        ):
            raise ValueError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")
        if not (0 < self.lease_seconds <= 86_400 and 0 < self.poll_interval < math.inf) or not (
            0 < self.stop_grace < math.inf
        ):
            raise ValueError(
                "lease_seconds (at most a day: 86400), poll_interval and stop_grace must be "
                "finite numbers > 0"
            )
        if not 0 <= self.lease_ahead <= 1:
            raise ValueError("lease_ahead must be between 0 and 1")


class Worker(Upkeep):
    config: WorkerConfig

    def __init__(
        self,
        store: Store,
        *,
        agents: Sequence[Agent] = (),
        config: WorkerConfig | None = None,
        clock: Clock = system_clock,
        on_committed: Callable[[Sequence[Committed]], None] | None = None,
        on_lost: Callable[[Sequence[int]], None] | None = None,
        seed: int | None = None,
        llm: LLMClient | None = None,
        executors: Mapping[str, Executor] | None = None,
        executor: str | None = None,
    ) -> None:
        self.store = store
        self.llm = llm
        if llm is not None and llm.budgets.history is None:
            # An agent's or a tenant's budget starts from what its tasks recorded before
            # (imported here: the LLM layer is loaded only where there is a client).
            from legion.run.spending import recorded_spend

            llm.budgets.history = functools.partial(recorded_spend, store)
        # Executors by name; ``executor`` (if given) overrides every agent's choice.
        self.executors = dict(executors or {})
        self._executor_override = executor
        self.fatal_error: BaseException | None = None
        self.config = config or WorkerConfig()
        self.host = socket.gethostname()  # asked once: it can take milliseconds
        self.id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # The store's time (the database's on PostgreSQL), which everything this worker
        # writes or compares with other workers' writes is in (see `StoreTime`).
        self._clock = StoreTime(clock)
        self._agents: dict[str, Agent] = {}
        # How often each agent's instances have made an LLM call, decayed (1.0 until one
        # ends): an agent whose instances make none is not held back by the LLM routes.
        self._callers: dict[str, float] = {}
        self._running: dict[str, int] = {}
        self._instances: dict[int, Instance] = {}
        self._by_task: dict[asyncio.Task[Any], Instance] = {}
        # The context the worker's bookkeeping runs in when an instance ends (see
        # `_instance_ended`), made once.
        self._done_context = contextvars.copy_context()  # (the loop's, once it runs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._journal = Journal(
            store,
            clock=self._clock,
            on_committed=self._committed,
            on_lost=self._refused,
            on_cancel=self._cancel_asked,
        )
        self._identity = identity.current()
        self._store_steps = ForwardSteps()  # (the reaper's: see legion.clock)
        self._meter = RouteMeter(llm) if llm is not None else None  # routes, per heartbeat
        # Leases: the last time (monotonic, when the call was sent) the store confirmed
        # them; a step waits for a fresh confirmation when it is older than _step_grace.
        self._heartbeat_every = min(self.config.lease_seconds / 3, 5.0)
        self._step_grace = 2 * self._heartbeat_every
        self._confirmed_at = clock.monotonic()
        # Steps waiting for a heartbeat sent after they asked: (heartbeats sent when asked,
        # the future the next one resolves); see `_before_step`.
        self._beats_sent = 0
        self._confirmations: list[tuple[int, asyncio.Future[None]]] = []
        self._beat = asyncio.Event()
        self._ambiguous_lease = False  # a lease call failed: the store may have leased rows
        # The tasks running apart from all others now (suspects of a worker's death, a
        # group that runs alone: see `Store.lease`'s ``isolated``), by id.
        self._apart: set[int] = set()
        self._reports: set[asyncio.Task[None]] = set()
        self._listener = on_committed
        self._lost_listener = on_lost
        self._counters = Counters()
        self._rng = random.Random(seed)
        self._services = Services(
            owner=self.id,
            store=self.store,
            journal=self._journal,
            clock=self._clock,
            rng=self._rng,
            llm=self.llm,
            strict=self.config.strict,
            before_step=self._before_step,
            on_end=self._instance_ended,
        )
        self._turn = 0
        self._wake = asyncio.Event()
        self._urgent = 0  # raised-priority tasks queued here, leased past admission
        self._raised_polled = -math.inf  # when raised-priority tasks were last looked for
        self._isolated_polled = -math.inf  # when tasks that must run apart were
        self._slots = asyncio.Event()
        self._stopping = asyncio.Event()
        self._releasing = False  # release_now() was called: every instance is given back
        self._fatal = asyncio.Event()
        self._batch_threshold = max(
            1, int(self.config.concurrency * self.config.lease_batch_fraction)
        )
        self._ahead = Ahead(int(self.config.concurrency * self.config.lease_ahead))
        # A group of suspects (tasks that must run apart) leased while others ran here: it
        # starts once they have ended, and nothing else is leased meanwhile. Left to an idle
        # worker alone, a group waited behind the whole queue of a busy fleet.
        self._suspects = Held()
        # Held leases start as slots free (in `_finished`) only while no LLM route limits
        # admission (and no agent has a cap); else the lease loop starts them, as admitted.
        self._ahead_open = False
        self._captured_last: Instance | None = None  # (the watchdog's thread's own)
        self._pitfalls_said: set[tuple[object, str, int]] = set()
        self._watchdog = LoopWatchdog(
            self._blocked,
            threshold=self.config.block_threshold,
            on_capture=self._captured,
            on_stuck=self._stuck,
        )
        self._freeze_guard: FreezeGuard | None = None
        self._overloaded: str | None = None
        self._overload_kind: str | None = None  # "lag" or "memory" while overloaded
        self._expiry = _Expiry(clock, self._stop)
        self.batch_desk: BatchDesk | None = None  # with an LLM client, once running
        self.started = asyncio.Event()  # set once run() is about to lease its first tasks
        for a in agents:
            self.add_agent(a)

    # -- configuration -----------------------------------------------------------------

    def add_agent(self, agent: Agent) -> None:
        existing = self._agents.get(agent.name)
        if existing is not None and existing is not agent:
            raise ValueError(f"two different agents are named {agent.name!r}")
        executor = self._executor_for(agent)  # refuse an agent this worker could not run
        if executor is not None:
            executor.check(agent)
        self._agents[agent.name] = agent
        self._running.setdefault(agent.name, 0)
        self._slots.set()  # a lease loop parked for want of agents has one now
        self.wake()

    def _offer_child(self, agent: Agent) -> None:
        """An agent an instance here spawns as a child: served here too, unless another
        agent of that name is (then it runs the child). One this worker cannot run (an
        executor it lacks) fails the parent now rather than leave the child queued."""
        if agent.name in self._agents:
            return
        try:
            self.add_agent(agent)
        except ConfigError as exc:
            raise Permanent(f"cannot run child agent {agent.name!r} here: {exc}") from exc

    @property
    def agents(self) -> Mapping[str, Agent]:
        return self._agents

    def wake(self, urgent: int = 0) -> None:
        """New work may be ready: look at the queue now instead of at the next poll.
        ``urgent``: that many tasks of a raised priority were just queued; the next lease
        takes them even while the LLM routes are busy (their calls go first there)."""
        self._urgent += urgent
        # The new work may be tasks that must run apart (taken back from a worker
        # that died): look for one at the next lease, not a poll later.
        self._isolated_polled = -math.inf
        self._wake.set()

    def statistics(self) -> Statistics:
        return self._counters.snapshot(len(self._instances))

    def holds(self, task_id: int) -> bool:
        return task_id in self._instances or task_id in self._ahead or task_id in self._suspects

    def cancel_local(self, task_id: int) -> bool:
        """Stop a running instance held by this worker; it is recorded ``cancelled``."""
        inst = self._instances.get(task_id)
        if inst is None:
            lease = self._ahead.remove(task_id) or self._suspects.remove(task_id)
            if lease is None:
                return False
            inst = self._start(lease)  # (it starts stopped: it ends at once, recorded)
        self._stop(inst, StopReason.CANCELLED)
        return True

    def stop(self) -> None:
        """Drain: lease nothing more, let running instances finish, then return from run()."""
        self._stopping.set()
        self._wake.set()
        self._slots.set()
        self._give_back_ahead()

    def _give_back_ahead(self) -> None:
        """The leases held ahead, and a group of suspects held, go back to the queue unrun
        (not charged to the tasks)."""
        for lease in (*self._ahead.take_all(), *self._suspects.take_all()):
            self._stop(self._start(lease), StopReason.RELEASED)

    def abort(self, error: BaseException) -> None:
        """Stop the run because of ``error``, which every other task would meet too:
        lease nothing more and give the running tasks back unfinished."""
        self.fatal_error = error
        self._fatal.set()
        log.info("stopping the worker: %s", error)
        self.release_now()

    async def wait_fatal(self) -> BaseException:
        """Wait until an error stops the worker (see `abort`) and answer it."""
        await self._fatal.wait()
        assert self.fatal_error is not None
        return self.fatal_error

    def release_now(self) -> None:
        """Give every running instance back to the queue at once (a second Ctrl-C)."""
        self.stop()
        self._releasing = True  # (instances a lease still starts are given back too)
        for inst in list(self._instances.values()):
            self._stop(inst, StopReason.RELEASED)

    # -- main loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stop`; returns after draining and committing everything."""
        self._loop = asyncio.get_running_loop()
        CHILD_AGENTS.set(self._offer_child)  # (the instances' contexts are copies of this)
        self._done_context = contextvars.copy_context()
        if self.config.watchdog:
            tracking.install(self._loop)
        with contextlib.suppress(StoreError):  # (the reaper measures it again, every pass)
            await self._follow_store_clock()
        await self._register()
        self._confirmed_at = self._clock.monotonic()  # no lease is held yet
        for executor in self.executors.values():
            await executor.start()
        journal = asyncio.create_task(self._journal.run(), name="legion-journal")
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="legion-heartbeat"),
            asyncio.create_task(self._reaper_loop(), name="legion-reaper"),
            asyncio.create_task(self._cancel_loop(), name="legion-cancels"),
        ]
        if self.llm is not None:
            from legion.run.shares import SharedCapacity  # the LLM layer loads only when used

            shares = SharedCapacity(self.llm, self.store, self.id, clock=self._clock)
            background.append(asyncio.create_task(shares.run(), name="legion-capacity"))
            from legion.waiting.batch import BatchDesk  # batch-tier calls: collect, poll

            self.batch_desk = BatchDesk(self.llm, self.store, clock=self._clock, wake=self.wake)
            background.append(asyncio.create_task(self.batch_desk.run(), name="legion-batch"))
            # What an instance's first call would load, loaded before any instance runs:
            # the calls' module (`ctx.llm`) and each route's price.
            llm_calls()
            self.llm.price_routes()
        heap.settle()  # full collections skip what start-up made (see legion.heap)
        idle = self.config.max_memory_mb is not None and rss_mb() > self.config.max_memory_mb
        if idle:  # (every worker of an autoscaled fleet would be overloaded from its start)
            log.warning(
                "--max-memory %.0f MB is below what this worker uses before running anything "
                "(%.0f MB): it will lease nothing; give it more",
                self.config.max_memory_mb,
                rss_mb(),
            )
        if self.config.watchdog:  # (after the collection: it is start-up, not lag)
            self._watchdog.start()
        self.started.set()
        gil.hand_over_sooner()  # the store's thread gets the GIL back sooner (legion.gil)
        heap.collect_less_often()  # fewer young collections (legion.heap)
        try:
            await self._lease_loop()
            await self._drain()
        finally:
            try:
                for t in (*background, *self._reports):
                    t.cancel()
                await asyncio.gather(*background, *self._reports, return_exceptions=True)
                self._give_back_ahead()
                if self._instances:  # run() itself was cancelled: give everything back
                    for inst in list(self._instances.values()):
                        self._stop(inst, StopReason.RELEASED)
                    await self._until_ended()
                    self._sweep_ended()
                self._journal.close()
                await journal
            finally:
                # The process-wide settings go back even when the shutdown above is cut
                # short (cancelled again, or the last commit failed).
                heap.unsettle()
                heap.collect_as_before()
                gil.hand_over_as_before()
            for executor in self.executors.values():
                await executor.aclose()
            if self.config.watchdog:
                self._watchdog.stop()
                tracking.uninstall(self._loop)
            try:
                await self.store.remove_worker(self.id)
            except Exception as exc:  # the store is gone; its row will age out
                log.warning("could not deregister worker %s: %s", self.id, exc)

    async def _lease_loop(self) -> None:
        cfg = self.config
        idle_wait = 0.005
        while not self._stopping.is_set():
            if self._check_overload():
                await self._sleep_or_wake(0.1)
                continue
            if self._ambiguous_lease and self._suspects:
                # Leases lost while this worker lived: the suspects it holds may be its own
                # tasks, which run with others again. Let go here, they are given back with
                # the rest of what it holds unrun, still suspects if they are another's
                # (`_release_unheld`, in the lease below).
                self._suspects.take_all()
            if self._suspects:
                if self._instances:  # (`_finished` wakes the loop when the last one ends)
                    self._slots.clear()
                    await self._slots.wait()
                    continue
                group = self._suspects.take_all()
                await self._start_batch(group)
                self._apart = {lease.id for lease in group if lease.id in self._instances}
                continue
            # (a cancelled held task starts stopped, past the slots for an instant: not < 0)
            free = max(0, min(cfg.concurrency - len(self._instances), self._admissible()))
            if free > 0 and self._ahead and not self._apart:
                # Leases held ahead start first, as far as the routes admit them.
                await self._start_batch(self._ahead.take(free))
                continue
            if free <= 0 and len(self._instances) < cfg.concurrency:
                # The routes are busy: instances started now would only queue for them.
                # Raised-priority tasks still start: their calls go ahead of the others'.
                self._ahead_open = False  # (and held ones start here, as admitted)
                if not await self._lease_raised():
                    await self._sleep_or_wake(_ADMISSION_RECHECK)
                continue
            ahead = self._lease_ahead()
            wants = self._wants(free + ahead)
            if free + ahead <= 0 or not wants or self._apart:
                self._slots.clear()
                await self._slots.wait()
                continue
            wanted = min(free + ahead, sum(wants.values()))
            now = self._clock.wall()
            try:
                if self._ambiguous_lease:
                    await self._release_unheld()
                # From here on, work queued (a wake) or a slot freed while the lease is
                # under way is kept for the wait that follows it: cleared after the lease,
                # it was lost, and the worker waited a poll for work already there, or
                # for ever for slots already free.
                self._wake.clear()
                self._slots.clear()
                leases: list[Lease] = []
                busy = bool(self._instances or self._ahead)
                # (a look for suspects is a lease call too: the instances that end while
                # it is out size the hold ahead, as they do during any other)
                self._ahead.lease_sent()
                if self._isolated_due(busy):
                    # First a group of tasks that must run apart, if any (never more than
                    # one agent's slots: a group may be of one agent). A busy worker holds
                    # it until what runs here has ended.
                    room = self._group_wants() if busy else wants
                    if room:
                        leases = await self.store.lease(
                            self.id,
                            room,
                            max(room.values()),
                            now + cfg.lease_seconds,
                            now,
                            isolated=True,
                            offer=cfg.offer,
                        )
                    if leases and busy:
                        self._ahead.lease_answered()
                        self._give_back_ahead()
                        self._suspects.hold(leases)
                        continue
                if not leases:
                    leases = await self.store.lease(
                        self.id,
                        wants,
                        wanted,
                        now + cfg.lease_seconds,
                        now,
                        offer=cfg.offer,
                        tenant_cap=cfg.tenant_max_running,
                    )
                    isolated = False
                else:
                    isolated = True
                self._ahead.lease_answered()
            except Exception as exc:
                # The store may have leased rows and lost the answer: give back whatever
                # is leased to this worker and not run, before leasing again.
                self._ambiguous_lease = True
                log.error("leasing failed (%s); retrying in %.1fs", exc, cfg.poll_interval)
                await self._sleep_or_wake(cfg.poll_interval)
                continue
            self._urgent = max(0, self._urgent - len(leases))
            got = len(leases)
            if got > free and not isolated:  # (in the order leased: by priority, then age)
                self._ahead.hold(leases[free:])
                leases = leases[:free]
                if self._stopping.is_set():  # stopped while the lease was out
                    self._give_back_ahead()
            await self._start_batch(leases)
            if isolated:  # (those that ended already are not waited for)
                self._apart = {lease.id for lease in leases if lease.id in self._instances}
                continue
            if got:
                idle_wait = 0.005
                if got < wanted:
                    # The queue is (nearly) empty: wait for more work or for the next poll.
                    await self._sleep_or_wake(cfg.poll_interval, woken_since_lease=True)
                elif self._wanted() <= self._batch_threshold:
                    # Wait for a batch of free slots, a poll at most: the few slots free
                    # by then are leased too (the instances running may be waiting for
                    # the tasks still queued: a fan-out's window that runs whole).
                    await self._wait_for_slots(cfg.poll_interval)
            else:
                await self._sleep_or_wake(idle_wait, woken_since_lease=True)
                idle_wait = min(idle_wait * 2, cfg.poll_interval)

    def _isolated_due(self, busy: bool) -> bool:
        """Whether to look for tasks that must run apart from others: at most every
        ``poll_interval`` (every `SUSPECTS_POLL_BUSY` of them while instances run here).
        A worker is idle between two batches of short tasks, a store round trip each time
        that found nothing (they are rare) and that the next batch's lease then waited
        behind."""
        now = self._clock.monotonic()
        every = self.config.poll_interval * (SUSPECTS_POLL_BUSY if busy else 1)
        if now - self._isolated_polled < every:
            return False
        self._isolated_polled = now
        return True

    async def _lease_raised(self) -> bool:
        """While the routes are busy: lease tasks of a raised priority (above 0) as far as
        their own lanes have room (and those just queued by this process, ``urgent``, or
        one while none of them runs here, whatever the room), at once when this process
        just queued some, else at most every ``poll_interval``. Answers whether it
        leased."""
        cfg = self.config
        now = self._clock.monotonic()
        if self._urgent <= 0 and now - self._raised_polled < cfg.poll_interval:
            return False
        if self._apart or self._ambiguous_lease:
            return False
        room = max(self._admissible(priority=1), self._urgent)
        if room <= 0 and not any(i.lease.priority > 0 for i in self._instances.values()):
            room = 1  # a slow route's lane admits less than one call: one at a time
        free = min(cfg.concurrency - len(self._instances), room)
        wants = self._wants(free)
        if free <= 0 or not wants:
            return False
        self._raised_polled = now
        wall = self._clock.wall()  # (a lease is on the store's clock, not the monotonic one)
        try:
            leases = await self.store.lease(
                self.id,
                wants,
                free,
                wall + cfg.lease_seconds,
                wall,
                offer=cfg.offer,
                min_priority=1,
                tenant_cap=cfg.tenant_max_running,
            )
        except Exception as exc:
            self._ambiguous_lease = True
            log.error("leasing failed (%s); retrying in %.1fs", exc, cfg.poll_interval)
            return False
        self._urgent = max(0, self._urgent - len(leases)) if leases else 0
        await self._start_batch(leases)
        return bool(leases)

    def _admissible(self, priority: int | None = None) -> int:
        """How many more instances may start: what the LLM routes serve soon, and the
        run's ``--max-calls`` lets start (see `_routes_admit`, `_budget_admits`)."""
        return min(self._routes_admit(priority), self._budget_admits())

    def _budget_admits(self) -> int:
        """How many more instances the run's ``--max-calls`` lets start: one for each
        call it has left, less the instances yet to make their first (at least one while
        none runs: its call finds the budget spent, and the worker stops). Leased past
        it, a task only went back to the queue, its first call refused (a worker with 10
        calls left leased the 290 tasks queued)."""
        budget = self.llm.budgets.run if self.llm is not None else None
        left = budget.calls_left() if budget is not None else None
        if left is None or self._all_quiet():
            return self.config.concurrency
        coming = sum(
            1
            for inst in self._instances.values()
            if inst.calls == 0 and not self._quiet(inst.agent.name)
        )
        return max(left - coming, 0 if self._instances else 1)

    def _routes_admit(self, priority: int | None = None) -> int:
        """How many more instances the LLM routes can serve soon: the least headroom of
        any route (calls that may still queue and start within the admission horizon),
        at least one instance while none runs, none while a route's queue (with a call
        for each instance yet to make its first) would take more than half the horizon to
        drain."""
        horizon = self.config.admission_horizon
        if self.llm is None or horizon is None:
            return self.config.concurrency
        if self._all_quiet():
            return self.config.concurrency  # (none of its agents calls an LLM)
        room = self.llm.headroom(horizon, priority)  # a pool's deployments add up
        if room == math.inf:
            return self.config.concurrency
        if not self._instances:
            return max(int(room), 1)
        # Instances started within the horizon that have made no call yet (a search step
        # first, a child process to start) are about to queue one: count them as queued
        # already. (One that made none for longer may never call: an agent without LLM
        # calls is not held back.)
        since = self._clock.monotonic() - horizon
        coming = sum(
            1
            for inst in self._instances.values()
            if inst.calls == 0
            and inst.started > since
            and (priority is None or inst.lease.priority >= priority)
            and not self._quiet(inst.agent.name)
        )
        # In batches: once the queues are down to half the horizon, fill them up again
        # (a lease per call that frees up would cost a store round trip each).
        if self.llm.headroom(horizon / 2, priority) - coming <= 0:
            return 0
        return max(int(room - coming), 0)

    def _lease_ahead(self) -> int:
        """How many tasks to lease beyond the free slots (`legion.run.ahead`): none while a
        task runs alone, while an LLM route limits admission (a held task would start
        past it), or while an agent has a cap of its own (held, it would not count)."""
        self._ahead_open = (
            self._ahead.cap > 0
            and not self._apart
            and self._admission_open()
            and all(a.options.concurrency is None for a in self._agents.values())
        )
        return self._ahead.wanted() if self._ahead_open else 0

    def _admission_open(self) -> bool:
        """Whether neither an LLM route nor the run's ``--max-calls`` limits how many
        instances start (asked again as each held task starts: a route can learn a
        limit, or start failing, meanwhile)."""
        horizon = self.config.admission_horizon
        llm = self.llm
        return (
            llm is None
            or self._all_quiet()
            or (
                (horizon is None or llm.headroom(horizon) == math.inf)
                and (llm.budgets.run is None or llm.budgets.run.limits.max_calls is None)
            )
        )

    def _quiet(self, agent: str) -> bool:
        """Whether ``agent``'s instances have made no LLM call of late: about 30 in a row,
        each call-less end moving its share of callers down by a tenth (the default
        route, the simulator, held an agent that never calls one to the ~150 instances
        its 3,000 rpm serve in the admission horizon)."""
        return self._callers.get(agent, 1.0) < _QUIET

    def _all_quiet(self) -> bool:
        return all(self._quiet(name) for name in self._agents)

    def _wanted(self) -> int:
        """How many tasks the worker could lease now: its free slots, and the leases it
        wants to hold ahead."""
        ahead = self._ahead.wanted() if self._ahead_open else 0
        return self.config.concurrency - len(self._instances) + ahead

    def _group_wants(self) -> dict[str, int]:
        """The most tasks of each agent that a group of suspects may hold here: what this
        worker runs of it once idle (its slots, the agent's cap)."""
        slots = self.config.concurrency
        wants = {}
        for name, agent in self._agents.items():
            if self.llm is not None and self.llm.budgets.agent_exhausted(name):
                continue
            cap = agent.options.concurrency
            wants[name] = slots if cap is None else min(slots, cap)
        return wants

    def _wants(self, free: int) -> dict[str, int]:
        """Free slots per agent, starting with a different agent each time (fairness)."""
        names = list(self._agents)
        if not names:
            return {}
        self._turn = (self._turn + 1) % len(names)
        wants = {}
        for name in names[self._turn :] + names[: self._turn]:
            if self.llm is not None and self.llm.budgets.agent_exhausted(name):
                continue  # its budget is spent: its tasks wait in the queue for more
            cap = self._agents[name].options.concurrency
            n = free if cap is None else min(free, cap - self._running[name])
            if n > 0:
                wants[name] = n
        return wants

    async def _wait_for_slots(self, seconds: float) -> None:
        """Wait until enough slots are free for a batch (`_finished` says so), or
        ``seconds`` on the worker's clock."""
        freed = asyncio.ensure_future(self._slots.wait())
        try:
            await within(self._clock, freed, seconds)
        finally:
            freed.cancel()

    async def _sleep_or_wake(self, seconds: float, *, woken_since_lease: bool = False) -> None:
        """Wait ``seconds`` (on the worker's clock), or less if woken: by this process (a
        submission), or by the store (another process queued work; PostgreSQL notifies,
        SQLite cannot). ``woken_since_lease``: a wake since the last lease began ends it
        at once."""
        if not woken_since_lease:
            self._wake.clear()
        woken = asyncio.ensure_future(self._wake.wait())
        notified = asyncio.ensure_future(self.store.wait_for_work(seconds))
        slept = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait((woken, notified, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (woken, notified, slept):
                f.cancel()
            await asyncio.gather(woken, notified, slept, return_exceptions=True)

    def _check_overload(self) -> bool:
        """Whether to hold off leasing: the loop lags, or memory is past its mark (the
        tasks held ahead go back then: held by a worker that runs nothing, a task would
        be charged for its crash, as if it had run alone)."""
        cfg = self.config
        kind = reason = None
        health = self._watchdog.health()
        lag = health.recent_lag
        if lag > cfg.max_loop_lag:
            kind = "lag"
            reason = f"event loop lag {lag * 1000:.0f} ms > {cfg.max_loop_lag * 1000:.0f} ms"
            if health.paused:  # (no agent's doing: the whole process stood still)
                reason += (
                    " (the process did not run meanwhile: stopped by a signal, its machine "
                    "suspended, or starved of CPU)"
                )
        elif cfg.max_memory_mb is not None and (rss := rss_mb()) > cfg.max_memory_mb:
            kind = "memory"
            reason = f"memory {rss:.0f} MB > {cfg.max_memory_mb:.0f} MB"
            if (
                not self._instances
                and self._overload_kind == "memory"
                and self._counters.leased
                and self.fatal_error is None
            ):
                # Still past it with nothing running (told once, then looked at again):
                # what holds the memory outlives the tasks, and waiting frees nothing (a
                # worker past it from its start, which a new one would be too, waits).
                heap.give_back()  # (a freed peak stays resident until then)
                if (rss := rss_mb()) > cfg.max_memory_mb:
                    self.abort(
                        MemoryExceeded(
                            f"memory {rss:.0f} MB > {cfg.max_memory_mb:.0f} MB with no task "
                            "running (memory an agent keeps, or a leak): a new process "
                            "starts afresh"
                        )
                    )
        # Said when it begins, changes kind or ends, not at each new figure (the process
        # paused reads as a lag that falls back over a second or two: 18 lines).
        if kind != self._overload_kind:
            if reason is not None:
                log.warning("not leasing: %s", reason)
                self._give_back_ahead()
            else:
                log.info("leasing again: the worker recovered")
            self._overload_kind = kind
        self._overloaded = reason
        return reason is not None

    def _owner(self, task: asyncio.Task[Any] | None) -> Instance | None:
        """The instance a task runs for: its own task, or one its agent created."""
        if task is None:
            return None
        found = self._by_task.get(task)
        if found is None:
            owner = tracking.owner_of(task)
            found = owner if isinstance(owner, Instance) else None
        return found

    def _captured(self, capture: Capture) -> None:
        """(The watchdog's thread.) A block is going on: tell the instance behind it now,
        as it may end right after the block, before the block's end is reported."""
        owner = self._owner(capture.task)
        before, self._captured_last = self._captured_last, owner
        if before is not None and before is not owner:
            # Another call blocks the same turn of the loop: the one before let go of it.
            pending = before.pending_block
            if pending is not None and pending.since == capture.since:
                before.pending_block = dataclasses.replace(pending, ended=capture.began)
        if owner is not None:
            owner.pending_block = capture

    def exit_when_frozen(
        self, *, max_freezes: int = 3, exit: Callable[[int], NoReturn] = os._exit
    ) -> FreezeGuard:
        """From now on, an agent that blocks the event loop past its timeout is recorded
        (dead after ``max_freezes`` such freezes) and the process exits (see
        `legion.run.freeze`; ``exit`` ends the process, with its code): for worker
        processes under a supervisor, and ``legion run``."""
        url = getattr(self.store, "url", None)
        self._freeze_guard = FreezeGuard(
            url=url if isinstance(url, str) else None,
            owner=self.id,
            find=self._owner,
            max_freezes=max_freezes,
            exit=exit,
        )
        return self._freeze_guard

    def _stuck(self, capture: Capture, blocked: float) -> None:
        """(The watchdog's thread.) The loop is blocked and has been for ``blocked`` s."""
        guard = self._freeze_guard
        if guard is not None:
            guard.stuck(capture, blocked)

    def _blocked(self, block: Block) -> None:
        """The watchdog saw the loop blocked: say who did it, on their task and in the log."""
        owner = self._owner(block.task)
        if owner is None or owner.pending_block is None:
            if owner is None:  # legion's own work under load: a metric only
                _worker_lag(block)
            return  # (or the instance ended and reported it already)
        owner.pending_block = None
        found = blocked_loop(owner.agent.name, block, agent_files(owner.agent.fn))
        if found is None:  # no frame of the agent's code ran: the worker's own lag
            _worker_lag(block)
            return
        owner.found(found)  # (logged with its attempt's end: `_say_pitfalls`)

    async def _release_unheld(self) -> None:
        """After leases this worker may hold were lost to it (a failed lease call, a
        store it could not reach for a whole lease, a pause): give back the rows still
        leased to it that nothing runs, and let the tasks taken from it meanwhile run
        with others again (it lives: none of them stopped it)."""
        keep = [
            *self._instances,
            *self._ahead.ids(),
            *self._suspects.ids(),
            *self._journal.completing(),  # (ended: their ends wait for the store)
        ]
        released = await self.store.release_unheld(self.id, keep)
        absolved = await self.store.absolve(self.id)
        self._ambiguous_lease = False
        if released:
            log.warning(
                "gave back %d leases that a failed lease call had taken and no instance runs",
                released,
            )
        if absolved:
            log.warning(
                "%d tasks taken back from this worker while it was cut off run with others "
                "again (it did not stop: none of them stopped it)",
                absolved,
            )

    async def _start_batch(self, leases: Sequence[Lease]) -> None:
        """Start one instance per lease, `START_SLICE` per turn of the event loop; the
        expiry timers end the ones whose time is up."""
        for lo in range(0, len(leases), START_SLICE):
            if lo:
                try:
                    await asyncio.sleep(0)  # the slice started runs to its first await
                except asyncio.CancelledError:
                    # The worker is cancelled: the rest are leased to it too, so they
                    # start, and are given back with the others.
                    for lease in leases[lo:]:
                        self._expiry.add(self._start(lease))
                    raise
                if self._releasing:
                    # Released meanwhile (a second Ctrl-C, a fatal error): the rest start
                    # stopped, and end given back without running.
                    for lease in leases[lo:]:
                        self._stop(self._start(lease), StopReason.RELEASED)
                    return
            for lease in leases[lo : lo + START_SLICE]:
                self._expiry.add(self._start(lease))

    def _start(self, lease: Lease) -> Instance:
        agent = self._agents[lease.agent]
        inst = Instance(lease, agent, self._clock)
        self._instances[lease.id] = inst
        self._running[agent.name] += 1
        self._counters.leased += 1
        # asyncio.Task, not loop.create_task: the loop's task factory (task ownership for
        # the diagnostics) is for tasks the agents create, and costs on every call.
        task = inst.task = asyncio.Task(
            run_instance(inst, self._services, self._executor_for(agent)),
            loop=self._loop,
            name=f"legion-task-{lease.id}",
        )
        self._by_task[task] = inst
        return inst

    def _instance_ended(self, inst: Instance) -> None:
        """`run_instance`'s last act: free the instance's slot (and start what it frees) in
        the worker's own context, not the ending instance's, which a task started from
        here would otherwise inherit. A task cancelled before its first step never gets
        here: `_sweep_ended` finds it."""
        self._done_context.run(self._finished, inst, inst.task)

    def _sweep_ended(self) -> None:
        """Free the slots of instances whose task ended without running `run_instance`
        (cancelled from outside the worker before its first step: legion's own stops let
        an instance begin and end itself)."""
        for inst in [i for i in self._instances.values() if ended(i)]:
            self._finished(inst, inst.task)

    def _executor_for(self, agent: Agent) -> Executor | None:
        name = self._executor_override or agent.options.executor
        if name == "async":
            return None
        found = self.executors.get(name)
        if found is None and name == "process":
            # A pool of the CPUs' count, made when an agent first asks for it (an embedded
            # Runtime given no executors: `Runtime(executor="process")` was refused).
            from legion.executors.process import ProcessExecutor

            found = self.executors[name] = ProcessExecutor()
        if found is None:
            raise ConfigError(
                f"agent {agent.name!r} runs on the {name!r} executor, which this worker does "
                f"not have (give it with --executor {name}"
                + (", or --ray-address local for this agent alone" if name == "ray" else "")
                + f", or Runtime(executors={{{name!r}: ...}}))"
            )
        return found

    def _finished(self, inst: Instance, task: asyncio.Task[None] | None = None) -> None:
        self._instances.pop(inst.lease.id, None)
        # The task's context holds the instance (tracking.CURRENT): without this the two
        # would be a cycle, each finished attempt left for the cyclic GC to find.
        inst.task = None
        self._expiry.discard(inst)
        if task is not None:
            self._by_task.pop(task, None)
        if self._apart and inst.lease.id in self._apart:
            self._apart.discard(inst.lease.id)
            if not self._apart:
                self._slots.set()
        if not self._instances and self._suspects:  # (a dict's test first: most ends stop there)
            self._slots.set()  # the group held starts now
        if inst.fatal is not None and self.fatal_error is None:
            self.abort(inst.fatal)
        name = inst.agent.name
        self._running[name] -= 1
        if self.llm is not None:
            share = self._callers.get(name, 1.0)
            self._callers[name] = share * 0.9 + (0.1 if inst.calls else 0.0)
        self._ahead.ended()
        if self._ahead and len(self._instances) < self.config.concurrency:
            if (
                self._ahead_open
                and not self._apart
                and self._overloaded is None
                and not self._stopping.is_set()
                and self._admission_open()
            ):
                self._expiry.add(self._start(self._ahead.pop()))  # the slot, filled at once
            else:
                self._slots.set()  # the lease loop starts it, as far as it may
        # Wake the lease loop for a batch worth leasing, or for a slot of a capped agent.
        if self._wanted() >= self._batch_threshold or inst.agent.options.concurrency is not None:
            self._slots.set()

    # -- lost leases -------------------------------------------------------------------

    def _lost(self, task_ids: set[int]) -> None:
        """The store refused these tasks' writes, or would not extend their leases: stop
        their instances (they write nothing more) and say so once each."""
        stopped: list[int] = []
        for task_id in task_ids:
            inst = self._instances.get(task_id)
            if inst is None or ended(inst) or inst.stop_reason is StopReason.LOST:
                continue
            self._stop(inst, StopReason.LOST)
            stopped.append(task_id)
            self._counters.lost_leases += 1
        if stopped:
            # No completion will come from them: whoever ended the lease ends the task.
            if self._lost_listener is not None:
                self._lost_listener(stopped)
            report = asyncio.get_running_loop().create_task(self._report_lost(stopped))
            self._reports.add(report)
            report.add_done_callback(self._reports.discard)

    def _refused(self, writes: set[tuple[int, int]]) -> None:
        """The store refused writes of these (task, attempt)s: stop the instances that run
        those attempts. A write of an earlier attempt of a task (a task its agent left
        running when it ended, writing after it) says nothing of the attempt that runs
        now: stopped for it, the attempt that runs now was taken for lost, and its task
        for one that crashed its worker."""
        lost = {
            task_id
            for task_id, attempt in writes
            if (inst := self._instances.get(task_id)) is not None and inst.lease.attempt == attempt
        }
        if lost:
            self._lost(lost)

    def _cancel_asked(self, task_ids: set[int]) -> None:
        """A write of these tasks found their cancellation asked: stop them now, before
        their next step, rather than at the next heartbeat."""
        for task_id in task_ids:
            inst = self._instances.get(task_id)
            if inst is not None and inst.stop_reason is None:
                self._stop(inst, StopReason.CANCELLED)

    async def _report_lost(self, task_ids: list[int]) -> None:
        try:
            infos: dict[int, TaskInfo] = {i.id: i for i in await self.store.get_many(task_ids)}
        except Exception:
            infos = {}
        # One line per holder, not per task: a worker paused past its lease lost a
        # hundred at once, and said so a hundred times.
        by_holder: dict[tuple[str, str | None], list[int]] = {}
        for task_id in sorted(task_ids):
            info = infos.get(task_id)
            if info is not None and info.lease_owner == self.id:
                # Taken back, then leased to this worker again (a lease call whose answer
                # it never got): a new attempt, not this one.
                holder: tuple[str, str | None] = ("a later attempt on this worker", None)
            elif info is not None and info.lease_owner is not None:
                holder = (f"worker {info.lease_owner}", None)
            else:  # (the status it has now, if it is still there)
                holder = ("the store", str(info.status) if info is not None else None)
            by_holder.setdefault(holder, []).append(task_id)
        for (who, status), ids in by_holder.items():
            one = len(ids) == 1
            if status is not None:
                who += f" (the task{' is' if one else 's are'} {status} now)"
            if one:
                log.warning("lease on task %d lost to %s; stopped", ids[0], who)
                continue
            shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
            log.warning("leases on %d tasks lost to %s; stopped (tasks %s)", len(ids), who, shown)

    def _before_step(self, task_id: int) -> asyncio.Future[None] | None:
        """Before a step runs: go on if the store confirmed this worker's leases lately;
        else wait for a heartbeat *sent after this* (which stops lost and cancelled
        instances). One already out when the step asks does not do: its answer may be
        from before the worker was paused, when the lease still held."""
        if self._clock.monotonic() - self._confirmed_at < self._step_grace:
            return None
        pending = self._confirmations
        if not pending or pending[-1][0] != self._beats_sent:
            pending.append((self._beats_sent, asyncio.get_running_loop().create_future()))
        self._beat.set()
        return asyncio.shield(pending[-1][1])

    def _say_pitfalls(self, done: Completion) -> None:
        """Log each pitfall of ``done`` the first time this worker sees it at its place."""
        for d in done.diagnostics:
            place = (d.kind, d.site.file if d.site else "", d.site.line if d.site else 0)
            if place in self._pitfalls_said or len(self._pitfalls_said) >= _PITFALLS_SAID:
                continue
            self._pitfalls_said.add(place)
            pitfalls_log.warning(
                "task %d: %s (said once for this place; `legion status --advice` counts all)",
                done.id,
                d.message,
                extra={"task_id": done.id, "agent": done.agent, "kind": str(d.kind)},
            )

    def _committed(self, batch: Sequence[Committed]) -> None:
        retry_at = None
        refused: list[int] = []
        for c in batch:
            comp = c.completion
            if not c.applied:
                self._counters.lost_leases += 1
                refused.append(comp.id)
                continue
            self._counters.count(comp.outcome, comp.finished_at - comp.started_at)
            if comp.diagnostics:
                self._say_pitfalls(comp)
            if comp.outcome in _FAILURES:
                _log_failure(comp)
                if comp.outcome is Outcome.RETRY:
                    retry_at = (
                        comp.not_before if retry_at is None else min(retry_at, comp.not_before)
                    )
        if refused:
            # Attempts that ended after their lease was lost (a pause past their timeout
            # and their lease): nothing of their end is kept, and nothing said so.
            shown = ", ".join(map(str, sorted(refused)[:10])) + (", ..." * (len(refused) > 10))
            log.warning(
                "the store refused the end of %d attempts (tasks %s): their leases were lost "
                "meanwhile (this worker paused or cut off past its lease); their tasks run "
                "again as the store has them",
                len(refused),
                shown,
            )
        if any(c.applied for c in batch):
            self.wake()  # an end may have woken a waiting parent, a suspension itself
        if retry_at is not None:
            self._clock.call_later(max(0.0, retry_at - self._clock.wall()), self.wake)
        if self._listener is not None:
            self._listener(batch)

    async def _drain(self) -> None:
        # Instances still waiting for room in their executor (a free child process) have
        # not begun: given back now, not started (after Ctrl-C a pool of 2 children
        # started 18 more tasks in the drain, then had to give 10 back).
        queued = {t for e in self.executors.values() for t in e.queued()}
        if queued:
            for inst in list(self._instances.values()):
                if inst.task in queued:
                    self._stop(inst, StopReason.RELEASED)
        if self._instances:
            log.info(
                "draining %d running tasks (up to %gs)",
                len(self._instances),
                self.config.drain_timeout,
            )
            pending = [i.task for i in self._instances.values() if i.task is not None]
            finished = asyncio.ensure_future(asyncio.wait(pending))
            if not await within(self._clock, finished, self.config.drain_timeout):
                finished.cancel()  # (not the instances: they are released below)
                await asyncio.gather(finished, return_exceptions=True)
            still = [t for t in pending if not t.done()]
            if still:
                log.warning("releasing %d unfinished tasks back to the queue", len(still))
                for inst in list(self._instances.values()):
                    self._stop(inst, StopReason.RELEASED)
                await self._until_ended()

    # -- stopping instances ------------------------------------------------------------

    def _stop(self, inst: Instance, reason: StopReason) -> None:
        """Stop an instance (see `Instance.stop`); if it has not ended ``stop_grace``
        seconds after its first stop, it is abandoned (`_unheeded`)."""
        first = inst.stop_reason is None
        inst.stop(reason)
        if first and inst.stop_reason is not None:
            self._clock.call_later(self.config.stop_grace, functools.partial(self._unheeded, inst))

    def _unheeded(self, inst: Instance) -> None:
        """An instance stopped ``stop_grace`` seconds ago runs on: its agent catches the
        cancellation. Write its end as its stop calls for, free its slot and stop its code
        (`legion.run.runner.abandon`)."""
        task = inst.task
        if task is None or task.done() or self._instances.get(inst.lease.id) is not inst:
            return  # (it ended)
        log.warning(
            "task %d: agent %r ran on %.0fs after it was stopped (%s): abandoned; it catches "
            "asyncio.CancelledError and goes on, which keeps a task from being stopped",
            inst.lease.id,
            inst.agent.name,
            self.config.stop_grace,
            inst.stop_reason.value if inst.stop_reason is not None else "stopped",
        )
        self._counters.abandoned += 1
        children = inst.children or ()  # (the tasks its agent created, with their own)
        abandon(inst, self._services)
        self._finished(inst, task)
        _close(task)
        for child in children:  # one that catches the cancellation held the instance's
            if not child.done():
                _close(child)

    async def _until_ended(self) -> None:
        """Wait until every running instance has ended, all of them stopped: those that
        run on past ``stop_grace`` are abandoned meanwhile (`_unheeded`)."""
        while running := [i.task for i in self._instances.values() if i.task and not ended(i)]:
            pause = asyncio.ensure_future(self._clock.sleep(self.config.stop_grace))
            try:
                await asyncio.wait([*running, pause], return_when=asyncio.FIRST_COMPLETED)
            finally:
                pause.cancel()


_ADMISSION_RECHECK = 0.05  # seconds between two looks at busy routes
_EXPIRY_GRAIN = 0.05  # seconds: instances due within one grain share a timer


class _Expiry:
    """Ends instances whose time is up: their timeout (running time only: waits for
    capacity do not count) or their deadline (waits included).

    Instances due within the same ``_EXPIRY_GRAIN`` share one timer (a bucket). When it
    fires, an instance that waited meanwhile is not due yet: it moves to the bucket of
    the soonest time it could be. A finished instance leaves its bucket at once, so no
    timer keeps a finished task.
    """

    __slots__ = ("_buckets", "_clock", "_stop")

    def __init__(self, clock: Clock, stop: Callable[[Instance, StopReason], None]) -> None:
        self._clock = clock
        self._stop = stop  # (the worker's: an instance that runs on is abandoned)
        self._buckets: dict[int, dict[int, Instance]] = {}

    def add(self, inst: Instance) -> None:
        due = inst.due()  # (the time it is up, without reading the clock)
        if due != math.inf:
            self._put(inst, due)

    def discard(self, inst: Instance) -> None:
        if inst.expiry is not None:
            inst.expiry.pop(inst.lease.id, None)
            inst.expiry = None

    def _put(self, inst: Instance, at: float) -> None:
        key = math.ceil(at / _EXPIRY_GRAIN)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            delay = key * _EXPIRY_GRAIN - self._clock.monotonic()
            self._clock.call_later(delay, functools.partial(self._fire, key))
        bucket[inst.lease.id] = inst
        inst.expiry = bucket

    def _fire(self, key: int) -> None:
        bucket = self._buckets.pop(key, None)
        if not bucket:
            return
        now = self._clock.monotonic()
        for inst in bucket.values():
            inst.expiry = None
            left = inst.remaining()
            if left is None:
                continue
            if left <= 1e-3:
                self._stop(inst, StopReason.TIMEOUT)
            else:
                self._put(inst, now + left)


def _close(task: asyncio.Task[Any]) -> None:
    """Stop the code of an abandoned instance (or of a task its agent created), which
    catches `asyncio.CancelledError`: close its coroutine (`GeneratorExit` at the
    ``await`` it waits at: its ``finally`` blocks run, and a bare ``except
    CancelledError`` does not catch it), then cancel its task, which ends once what it
    awaited is done or cancelled. Code that awaits even as it is closed runs on,
    abandoned."""
    chain: list[Any] = []  # the coroutines it waits in, outermost first
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_frame"):
        chain.append(coro)
        coro = coro.cr_await
    try:
        task.get_coro().close()
    except Exception as exc:  # ("coroutine ignored GeneratorExit", or it raised another)
        log.warning("%s: could not be stopped (%s); it runs on, abandoned", task.get_name(), exc)
        return
    deaf = [c for c in chain if c.cr_frame is not None]  # (closed: no frame left)
    if deaf:  # it caught GeneratorExit too and awaited again: stranded, never resumed
        log.warning(
            "%s: %s caught GeneratorExit as well and was left suspended, never resumed "
            "(Python may report it ignored GeneratorExit when it is collected)",
            task.get_name(),
            deaf[-1].__qualname__,
        )
    task.add_done_callback(_retrieved)
    task.cancel()


def _retrieved(task: asyncio.Task[Any]) -> None:
    """(A closed coroutine's task ends on a RuntimeError, which nobody awaits.)"""
    if not task.cancelled():
        task.exception()


def _worker_lag(block: Block) -> None:
    """A block of the loop by legion's own work (a metric in the loop's health; no agent
    is told of it)."""
    log.debug("worker lag: the event loop was blocked for %.0f ms", block.seconds * 1000)
