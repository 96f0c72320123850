"""The scaling policy's input, read from the store: `legion.provision.policy.Demand`.

One reading costs three queries (the backlog, the task counts, the worker registry). The
backlog is of the agents the pool's workers serve (`served`): a task no worker of the pool
can run (an agent no worker serves) asks for no worker, where one such task left queued
raised the pool to its maximum, its age counting for "the oldest task waited". The
tasks finished per worker per second come from the workers' own counters (reported in
each heartbeat) between two readings, so a `Board` is kept between them. A route's
headroom sums, over the workers sharing it (one provider endpoint and model: the key of
the shared capacity board), the requests and tokens per minute each reported, against
the route's limit.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from legion.provision.policy import Demand, RouteHeadroom, WorkerLoad
from legion.store.base import Store
from legion.store.types import Backlog, WorkerInfo
from legion.task import TaskStatus

BACKLOG_SHARE = 0.02
"""The most of its time a reader spends counting the backlog, a scan of the queue: a count
that took 50 ms (300,000 tasks queued) is made again 2.5 s later at the soonest. (Made at
every sample, each second for `legion serve`, it kept a PostgreSQL backend 13 % busy with
277,000 tasks queued.) Meanwhile the last count answers, moved by what the counts by
status (a table of their own, read at once) say has been queued or taken since."""


class Board:
    """Reads `Demand` snapshots; keeps what the throughput estimate needs."""

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        stale_after: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._concurrency = concurrency  # slots per worker; None: as the workers report
        self._stale_after = stale_after
        self._last: tuple[float, int] | None = None  # (at, tasks finished by all workers)
        self._finished: dict[str, int] = {}
        self._throughput: float | None = None
        self._monotonic = monotonic
        # The last count of the backlog: of which agents, the tasks then queued (ready
        # or not), and when the next count may be made.
        self._backlog: tuple[frozenset[str] | None, Backlog, int, float] | None = None
        self.registered: list[WorkerInfo] = []  # the workers as of the last `read`
        self.read_at = 0.0  # and when (the store's clock)

    async def backlog(self, store: Store, now: float, agents: Collection[str] | None) -> Backlog:
        """`Store.backlog`, counted again once `BACKLOG_SHARE` of the time since the last
        count is what the last one cost (at once for other agents, or when none was ready
        and some came: the oldest one's age is then unknown)."""
        named = None if agents is None else frozenset(agents)
        by_agent = await store.counts_by_agent()
        queued = sum(
            counts.get(TaskStatus.QUEUED, 0)
            for agent, counts in by_agent.items()
            if named is None or agent in named
        )
        began = self._monotonic()
        if self._backlog is not None:
            was, counted, queued_then, next_at = self._backlog
            if was == named and began < next_at and (counted.ready or queued <= queued_then):
                ready = max(0, counted.ready + queued - queued_then)
                return Backlog(ready, counted.oldest_created_at if ready else None)
        counted = await store.backlog(now, agents)
        ended = self._monotonic()
        self._backlog = (named, counted, queued, ended + (ended - began) / BACKLOG_SHARE)
        return counted

    async def read(
        self,
        store: Store,
        *,
        ignore: Collection[int] = (),
        own: Collection[int] = (),
        serves: Collection[str] = (),
    ) -> Demand:
        """A snapshot of the store now; workers whose pid is in ``ignore`` (draining ones)
        are left out. The backlog is of the agents ``serves`` names and those served by
        this host's workers whose pid is in ``own`` (every agent's while that is none)."""
        now = await store.now()
        registered = await store.workers()
        self.registered, self.read_at = registered, now
        live = [w for w in registered if w.pid not in ignore or not _local(w)]
        agents = served((w for w in registered if w.pid in own and _local(w)), serves)
        backlog = await self.backlog(store, now, agents)
        counts = await store.counts()
        return self.demand(now, backlog.ready, backlog.oldest_created_at, counts, live)

    def demand(
        self,
        now: float,
        ready: int,
        oldest: float | None,
        counts: dict[TaskStatus, int],
        workers: list[WorkerInfo],
    ) -> Demand:
        loads = tuple(
            WorkerLoad(
                w.id,
                int(w.load.get("in_flight", 0) or 0),
                not w.silent(now, self._stale_after) and not w.load.get("overloaded"),
                bool(w.load.get("metered", True)),
            )
            for w in workers
        )
        return Demand(
            at=now,
            queued=ready,
            oldest_wait=max(0.0, now - oldest) if oldest is not None else 0.0,
            running=counts.get(TaskStatus.RUNNING, 0),
            workers=loads,
            concurrency=self._slots(workers),
            throughput=self._measure(now, workers),
            routes=tuple(route_headroom(w.load for w in workers)),
        )

    def _slots(self, workers: list[WorkerInfo]) -> int:
        if self._concurrency is not None:
            return self._concurrency
        reported = [int(w.load.get("concurrency", 0) or 0) for w in workers]
        return max([n for n in reported if n > 0], default=1000)

    def _measure(self, now: float, workers: list[WorkerInfo]) -> float | None:
        """Tasks finished per second per busy worker since the last reading (smoothed)."""
        done = 0
        for w in workers:
            finished = int(w.load.get("succeeded", 0) or 0) + int(w.load.get("failed", 0) or 0)
            done += max(0, finished - self._finished.get(w.id, finished))
            self._finished[w.id] = finished
        self._finished = {w.id: self._finished[w.id] for w in workers}
        last, self._last = self._last, (now, done)
        busy = sum(1 for w in workers if int(w.load.get("in_flight", 0) or 0) > 0)
        if last is None or now <= last[0] or busy == 0:
            return self._throughput
        rate = done / (now - last[0]) / busy
        if rate > 0:
            prev = self._throughput
            self._throughput = rate if prev is None else prev + 0.5 * (rate - prev)
        return self._throughput


def served(workers: Iterable[WorkerInfo], also: Collection[str] = ()) -> set[str] | None:
    """The agents ``workers`` serve (as their heartbeats say) and ``also``; ``None`` (every
    agent) when that is none: a pool whose workers have not registered yet."""
    agents = set(also)
    for worker in workers:
        agents.update(worker.load.get("agents", ()))
    return agents or None


def route_headroom(loads: Iterable[Any]) -> list[RouteHeadroom]:
    """Each route's use of its limit, summed over the workers' heartbeat reports."""
    rpm: dict[str, float] = {}
    tpm: dict[str, float] = {}
    limits: dict[str, tuple[float | None, float | None]] = {}
    names: dict[str, str] = {}
    paused: dict[str, bool] = {}
    waiting: dict[str, int] = {}
    limited: dict[str, int] = {}
    for load in loads:
        for key, r in (load.get("routes") or {}).items():
            rpm[key] = rpm.get(key, 0.0) + float(r.get("rpm") or 0.0)
            tpm[key] = tpm.get(key, 0.0) + float(r.get("tpm") or 0.0)
            limits.setdefault(key, (r.get("rpm_limit"), r.get("tpm_limit")))
            names.setdefault(key, str(r.get("name") or key))
            paused[key] = paused.get(key, False) or bool(r.get("paused"))
            waiting[key] = waiting.get(key, 0) + int(r.get("waiting") or 0)
            limited[key] = limited.get(key, 0) + int(r.get("limited") or 0)
    out = []
    for key, (rpm_limit, tpm_limit) in sorted(limits.items()):
        parts = [
            used / limit for used, limit in ((rpm[key], rpm_limit), (tpm[key], tpm_limit)) if limit
        ]
        utilization = max(parts) if parts else None
        out.append(RouteHeadroom(names[key], utilization, paused[key], waiting[key], limited[key]))
    return out


def _local(worker: WorkerInfo) -> bool:
    return worker.host == _HOST


_HOST = socket.gethostname()
