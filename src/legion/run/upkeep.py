"""The worker's upkeep: its heartbeat, its health report, and the reaper.

`Upkeep` is the half of `legion.run.worker.Worker` (its base class) that keeps the
worker's standing in the store while the lease loop runs the tasks:

- **heartbeat**: extends the leases of the instances it runs and of the tasks it holds
  ahead (only those; see `legion.run.ahead`) and reports the worker's load; stops
  instances whose cancellation was asked through the store and those whose lease it could
  not extend (lost to another worker). A worker that could not heartbeat for a whole
  lease stops all its instances: their leases may be gone;
- **health**: what the heartbeat reports (load, loop lag, memory, routes);
- **reaper**: takes back the leases of workers that died (their process is certainly
  gone, their heartbeat stopped, or their leases simply expired), and ticks timers and
  schedules.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from legion import identity
from legion.agent import Agent
from legion.clock import ForwardSteps, StoreTime, within
from legion.diagnostics.watchdog import LoopWatchdog
from legion.errors import StoreGone
from legion.resources import satisfies
from legion.run.ahead import Ahead, Held
from legion.run.route_meter import RouteMeter
from legion.run.runner import Instance
from legion.stats import Statistics
from legion.store.base import Store
from legion.store.types import WorkerInfo
from legion.waiting import schedules

if TYPE_CHECKING:
    from legion.llm.client import LLMClient

log = logging.getLogger("legion.worker")

CANCEL_POLL = 0.5
"""Seconds between two looks for the cancels asked of the tasks a worker runs."""


FIRST_REPORTS_EVERY = 1.0
"""Seconds between a new worker's heartbeats until its routes' rates are measured."""


class UpkeepConfig(Protocol):
    """What the upkeep reads of the worker's configuration."""

    @property
    def concurrency(self) -> int: ...

    @property
    def lease_seconds(self) -> float: ...

    @property
    def offer(self) -> Mapping[str, float]: ...


class Upkeep:
    """Heartbeat, health and reaper of a worker; `legion.run.worker.Worker` derives from
    it and sets what it reads."""

    id: str
    host: str
    store: Store
    llm: LLMClient | None
    config: UpkeepConfig
    _clock: StoreTime
    _agents: dict[str, Agent]
    _instances: dict[int, Instance]
    _ahead: Ahead
    _suspects: Held
    _identity: identity.ProcessIdentity
    _meter: RouteMeter | None
    _watchdog: LoopWatchdog
    _overloaded: str | None
    _heartbeat_every: float
    _confirmed_at: float
    _beats_sent: int
    _confirmations: list[tuple[int, asyncio.Future[None]]]
    _beat: asyncio.Event
    _ambiguous_lease: bool
    _store_steps: ForwardSteps

    if TYPE_CHECKING:  # the worker's own, called from here

        def statistics(self) -> Statistics: ...

        def wake(self, urgent: int = 0) -> None: ...

        def cancel_local(self, task_id: int) -> bool: ...

        def _lost(self, task_ids: set[int]) -> None: ...

        def abort(self, error: BaseException) -> None: ...

        def _sweep_ended(self) -> None: ...

    async def _follow_store_clock(self) -> float:
        """The store's time now, which this worker's clock then follows (`StoreTime`)."""
        store_now, _ = await self._read_store_clock()
        return store_now

    async def _read_store_clock(self) -> tuple[float, float]:
        """The store's time now, which this worker's clock then follows (`StoreTime`),
        and the monotonic time it was read at (a round trip's midpoint)."""
        before, since = self._clock.local_wall(), self._clock.monotonic()
        store_now = await self.store.now()
        self._clock.follow(store_now, (before + self._clock.local_wall()) / 2)
        return store_now, (since + self._clock.monotonic()) / 2

    def health(self) -> dict[str, object]:
        """What the worker reports in its heartbeat: load, loop lag, memory."""
        s = self.statistics()
        h = self._watchdog.health()
        return {
            "in_flight": s.in_flight,
            "succeeded": s.succeeded,
            "failed": s.failed + s.dead,
            "loop_lag_ms": round(h.recent_lag * 1000, 1),
            "max_loop_lag_ms": round(h.max_lag * 1000, 1),
            "blocked": h.blocks,
            "blocked_ms": round(h.blocked_seconds * 1000),
            "rss_mb": round(rss_mb(), 1),
            "overloaded": self._overloaded,
            "agents": sorted(self._agents),
            "uncovered": sorted(
                name
                for name, agent in self._agents.items()
                if not satisfies(self.config.offer, dict(agent.options.resources))
            ),
            "breakers_open": self._open_breakers(),
            "concurrency": self.config.concurrency,
            "held_ahead": len(self._ahead),
            "routes": self._meter.report() if self._meter is not None else {},
            "llm": self._llm_report(),
            "metered": self._meter is None or self._meter.measured,
            "offer": dict(self.config.offer),
            "lease_seconds": self.config.lease_seconds,
        }

    def _llm_report(self) -> dict[str, object]:
        """Each LLM route's counters (`legion.llm.route_report`): what a server without a
        worker of its own shows of the fleet's routes."""
        if self.llm is None:
            return {}
        # (here: the LLM layer loads with a client, not with the worker's module)
        from legion.llm.route_report import route_report

        return {n: route_report(r) for n, r in self.llm.statistics().routes.items()}

    def _open_breakers(self) -> list[str]:
        """The LLM routes whose circuit breaker is not closed (calls wait for a probe)."""
        if self.llm is None:
            return []
        return [r.name for r in self.llm.routes.values() if r.breaker and r.breaker.state]

    async def _register(self) -> None:
        now = self._clock.wall()
        me = self._identity
        info = WorkerInfo(
            self.id, self.host, me.pid, now, now, self.health(), me.boot_id, me.pid_ns, me.start
        )
        await self.store.register_worker(info)

    async def _heartbeat_loop(self) -> None:
        lease = self.config.lease_seconds
        failing_since: float | None = None
        while True:
            # Every second until the routes' rates are measured: the scaling policy waits
            # for a new worker's report of them before it adds more (two heartbeats 5 s
            # apart made each doubling of a fleet take 12-15 s).
            interval = self._heartbeat_every
            if self._meter is not None and not self._meter.measured:
                interval = min(interval, FIRST_REPORTS_EVERY)
            if not self._confirmations:  # (else the step that asked gets the next at once)
                self._beat.clear()
            beat = asyncio.ensure_future(self._beat.wait())  # a step asks for one now
            try:
                await within(self._clock, beat, interval)
            finally:
                beat.cancel()
            try:
                await self.heartbeat()
            except StoreGone as exc:  # (every write from here on would be lost)
                log.error("stopping: %s", exc)
                self.abort(exc)
                return
            except Exception as exc:
                self._beat.clear()  # (the next try after an interval, or when a step asks)
                if failing_since is None:
                    failing_since = self._clock.monotonic()
                log.error("heartbeat failed: %s", exc)
                if self._clock.monotonic() - self._confirmed_at > lease and (
                    self._instances or self._ahead or self._suspects
                ):
                    log.error(
                        "no heartbeat for a whole lease (%.0fs): stopping all %d instances, "
                        "whose leases may be taken",
                        lease,
                        len(self._instances),
                    )
                    self._lost(set(self._instances))
                    self._ahead.take_all()  # (given back below, if still this worker's)
                    self._suspects.take_all()
                    # Rows still leased to it go back to the queue (not charged) as soon as
                    # the store answers again.
                    self._ambiguous_lease = True
            else:
                if failing_since is not None:  # (the errors stop: say that it is over)
                    log.warning(
                        "the store answers again: heartbeats failed for %.0f s",
                        self._clock.monotonic() - failing_since,
                    )
                    failing_since = None

    async def heartbeat(self) -> None:
        """Extend the leases of the instances this worker runs; stop those whose lease is
        gone or whose cancellation was asked; report the load (registering anew if the
        worker's row was taken for dead)."""
        sent = self._clock.monotonic()
        self._beats_sent += 1
        ticket = self._beats_sent  # (a step that asked before this beat was sent waits)
        self._sweep_ended()
        running = [i for i, inst in self._instances.items() if not ended(inst)]
        asked = running + self._ahead.ids() + self._suspects.ids()
        now = self._clock.wall()
        extended = await self.store.extend_leases(
            self.id, asked, now + self.config.lease_seconds, now
        )
        self._confirmed_at = sent
        # (over the held ones too: one may have started while the call was out)
        lost = {
            i
            for i in asked
            if i not in extended.held
            and (inst := self._instances.get(i)) is not None
            and not ended(inst)
            and inst.stop_reason is None
        }
        if lost:
            self._lost(lost)
            # Taken while this worker lived (paused, or cut off): the tasks taken from it
            # need not run alone (see `Worker._release_unheld`, at the next lease).
            self._ambiguous_lease = True
        dropped = self._ahead.drop(set(asked) - extended.held)
        dropped += self._suspects.drop(set(asked) - extended.held)
        if dropped:  # (not started: nothing to stop)
            log.warning("leases on %d tasks held ahead were lost; not started", dropped)
        for task_id in extended.cancel:
            self.cancel_local(task_id)
        while self._confirmations and self._confirmations[0][0] < ticket:
            _, confirmed = self._confirmations.pop(0)
            if not confirmed.done():
                confirmed.set_result(None)
        await self._register()

    async def _cancel_loop(self) -> None:
        """Stop the instances whose cancellation was asked through the store (another
        process's `Runtime.cancel`, the API, the command line) within `CANCEL_POLL`
        seconds: the heartbeat says so too, but up to 5 s later, after which a task that
        writes nothing (an LLM call, a sleep) had often finished, its effects done."""
        while True:
            await self._clock.sleep(CANCEL_POLL)
            if not self._instances:
                continue
            try:
                asked = await self.store.cancels_asked(self.id)
            except Exception as exc:  # (the heartbeat and the lease loop say the store's state)
                log.debug("looking for cancels failed: %s", exc)
                continue
            for task_id in asked:
                inst = self._instances.get(task_id)
                if inst is None or inst.stop_reason is None:  # (not told already)
                    self.cancel_local(task_id)

    async def _reaper_loop(self) -> None:
        while True:
            try:
                await self.reap()
            except Exception as exc:
                log.error("reclaiming leases failed: %s", exc)
            # Often enough that a dead worker on this host is noticed within seconds.
            await self._clock.sleep(min(self.config.lease_seconds / 2, 2.0))

    async def reap(self) -> None:
        """Take back leases of dead workers and expired leases.

        A worker is dead once its heartbeat is older than two lease periods (by the
        store's clock: the database's on PostgreSQL), or early — once its heartbeat is
        no longer fresh (older than a heartbeat period, or ahead of this clock) — when
        its process is certainly gone: same kernel boot, same PID namespace, and the PID
        free or another process's (see `legion.identity`). A host name alone proves
        nothing."""
        store_now, read_at = await self._read_store_clock()
        # Ages judged by the store's clock as it ran before a step ahead, for a lease
        # after it (see `ForwardSteps`); 0 when it ran steadily.
        behind = self._store_steps.behind(store_now, read_at, self.config.lease_seconds)
        me = self._identity
        dead = []
        for w in await self.store.workers():
            if w.id == self.id:
                continue
            age = store_now - behind - w.heartbeat_at
            # (a heartbeat ahead of this clock, from a worker whose clock ran ahead, is no
            # fresher for it: a SQLite store has no clock of its own)
            if age > 2 * self.config.lease_seconds or (
                (age > self._heartbeat_every or age < 0) and w.gone(me)
            ):
                dead.append(w.id)
        reclaimed = await self.store.reclaim(self._clock.wall() - behind, dead, keep=self.id)
        for wid in dead:
            await self.store.remove_worker(wid)
        # Timers and cron ticks, on the store's clock (the database's on PostgreSQL), which
        # durable waits set their wake-up times on.
        if await schedules.tick(self.store, store_now, self._agents):
            self.wake()
        if reclaimed.sessions_ended:
            log.warning(
                "ended %d store sessions whose process stopped answering in the middle of "
                "a transaction (paused or cut off): the rows they locked can be taken back",
                reclaimed.sessions_ended,
            )
        if reclaimed.requeued or reclaimed.dead or reclaimed.cancelled:
            # (a worker whose process is gone loses its leases before they run out)
            whose = (
                f"of workers that stopped ({', '.join(dead)}) and any that ran out"
                if dead
                else "that ran out (their workers stopped, paused or cut off from the store)"
            )
            log.warning(
                "took back leases %s: %d re-queued, %d dead, %d cancelled",
                whose,
                reclaimed.requeued,
                reclaimed.dead,
                reclaimed.cancelled,
            )
            self.wake()


def rss_mb() -> float:
    """This process's resident memory in MB (peak memory where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def ended(inst: Instance) -> bool:
    """Whether an instance's task is over (or was never started)."""
    return inst.task is None or inst.task.done()
