"""The scaling policy: how many workers the work asks for, and why.

A pure function of a `Demand` (a snapshot of the store: the backlog and its age,
the tasks running, the live workers and their health, the measured throughput, and the
headroom of every LLM route on the shared capacity board), the `ScalingConfig`
and the previous `PolicyState`; no I/O and no clock of its own, so it is tested
on made-up snapshots and a made-up time. The ``legion worker --autoscale`` supervisor and
the ``legion_workers_desired`` gauge both call it.

The formula, with ``Q`` tasks ready in the queue (of the agents the pool serves: see
`legion.provision.board`), ``R`` running, ``S`` instances per
worker (``--concurrency``), ``r`` tasks finished per second by one worker (measured;
unknown at first), ``T`` the ``drain_target`` (seconds within which a backlog should
clear), ``H`` healthy workers and ``U`` unhealthy ones (overloaded or with a stale
heartbeat: they lease nothing)::

    by_slots = ceil((R + Q) / S)             # enough instance slots for all the work
    by_rate  = ceil(R_workers + Q / (r * T)) # enough throughput to clear Q within T
               (only when r is known and Q > 0; R_workers = workers running something)
    by_age   = H + 1                         # the oldest ready task waited > max_wait
               (only then)
    wanted   = max(by_slots, by_rate, by_age) + U

Then, in this order:

1. **Saturated routes hold it.** If a route's utilization (the larger of requests and
   tokens per minute over its limit, summed over every worker sharing it) is at or
   above ``saturation`` (90 %), or at half of that with calls queued at its limiter (a
   limiter slowed below the limit by 429s), or a 429 pause is in force on it, more
   workers would only add 429s: ``desired`` goes no higher than it is (or than the
   workers running, if more); it may still go down.
2. **Scale-up is stepwise.** It waits until every worker asked for runs and has reported
   its routes once (their headroom is unknown before), and at most doubles the workers
   running (from none: one) per decision.
3. **Scale-down waits for a cool-down.** A ``wanted`` below the current ``desired``
   takes effect only after it has stayed below for ``cooldown`` seconds; scale-up is
   immediate.
4. **Bounds.** ``desired = min(max(wanted, minimum), maximum)``.

The answer is a `Decision`: ``desired``, ``running`` and one line that says why
("held at 2: route default is at 99 % of its limit").
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RouteHeadroom:
    """One LLM route (one provider, endpoint and model: one budget) across workers."""

    route: str
    utilization: float | None  # used / limit, the larger of requests and tokens (None: no limit)
    paused: bool = False  # a 429 pause is in force on it
    waiting: int = 0  # calls queued for their turn at the limiter, in every worker
    limited: int = 0  # 429s it answered over the workers' last few seconds (5)


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One live worker, as of its last heartbeat."""

    id: str
    in_flight: int
    healthy: bool  # heartbeat fresh and not overloaded: it leases
    reported: bool = True  # it has reported its routes' rates at least once


@dataclass(frozen=True, slots=True)
class Demand:
    """What the policy reads: a snapshot of the store at ``at``."""

    at: float
    queued: int  # tasks ready to run now (not waiting for a retry's backoff)
    oldest_wait: float  # seconds the oldest ready task has waited (0: none)
    running: int  # tasks leased, in every worker
    workers: tuple[WorkerLoad, ...]
    concurrency: int  # instance slots per worker
    throughput: float | None = None  # tasks finished per second by one worker (None: unknown)
    routes: tuple[RouteHeadroom, ...] = ()


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    minimum: int = 0
    maximum: int | None = None  # None: no bound (a cluster's autoscaler bounds it)
    drain_target: float = 30.0  # seconds within which a backlog should clear
    max_wait: float = 10.0  # a ready task waiting longer asks for one more worker
    saturation: float = 0.9  # a route used this much of its limit holds scale-up
    cooldown: float = 60.0  # seconds the work must ask for fewer before scale-down

    def __post_init__(self) -> None:
        if self.minimum < 0:
            raise ValueError("the minimum of workers cannot be negative")
        if self.maximum is not None and self.maximum < max(self.minimum, 1):
            raise ValueError("the maximum of workers must be at least 1 and the minimum")


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between two calls."""

    desired: int = 0
    low_since: float | None = None  # since when ``wanted`` has stayed below ``desired``
    share_low_since: float | None = None
    """Since when a fleet's share of the pool has stayed below the workers it runs, the
    other fleets having grown (see `legion.provision.autoscaler.fleet_decision`)."""


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    running: int  # live workers now
    wanted: int  # what the work asks for, before holds and bounds
    reason: str


def parse_bounds(value: str) -> tuple[int, int]:
    """``MIN:MAX`` (``--autoscale``) as two numbers; a clear ValueError otherwise."""
    lo, sep, hi = value.partition(":")
    try:
        if not sep:
            raise ValueError
        low, high = int(lo), int(hi)
    except ValueError:
        raise ValueError(
            f"--autoscale takes MIN:MAX (two numbers, as 1:8), not {value!r}"
        ) from None
    if low < 0:
        raise ValueError("--autoscale: MIN cannot be negative")
    if high < max(low, 1):
        raise ValueError("--autoscale: MAX must be at least 1 and at least MIN")
    if high > MOST_WORKERS:
        raise ValueError(
            f"--autoscale: MAX is at most {MOST_WORKERS} worker processes on one machine "
            "(each runs up to --concurrency instances; more machines take more)"
        )
    return low, high


MOST_WORKERS = 1024
"""The most worker processes one autoscaling supervisor starts."""


def decide(
    demand: Demand, config: ScalingConfig, state: PolicyState
) -> tuple[Decision, PolicyState]:
    """The workers ``demand`` asks for under ``config``, and the state to pass next time."""
    running = len(demand.workers)
    healthy = sum(1 for w in demand.workers if w.healthy)
    unhealthy = running - healthy
    wanted, why = _wanted(demand, config, healthy)
    wanted += unhealthy
    if unhealthy:
        why += f", {unhealthy} unhealthy"
    current = state.desired

    saturated = _saturated(demand.routes, config.saturation)
    target = wanted
    reason = ""
    if saturated is not None and target > max(running, current):
        target = max(running, current)
        reason = f"held at {target}: {saturated}"

    if target > current and config.maximum is not None and current >= config.maximum:
        target = current  # (at the maximum: what starts or reports changes nothing, and the
        reason = ""  # reason said "waiting for 2 worker(s) to start" long after they had)
    elif target > current:
        starting = current - running
        quiet = sum(1 for w in demand.workers if not w.reported)
        if starting > 0 or quiet > 0:
            # The routes' headroom is known only once every worker asked for reports it.
            target = current
            reason = (
                f"held at {current}: waiting for {max(starting, quiet)} worker(s) to start "
                f"and report (the work asks for {wanted})"
            )
        elif target > max(1, 2 * running):
            target = max(1, 2 * running)  # at most double per round

    # (Never below the minimum: a fleet at it and idle was "held for the cool-down", a new
    # log line a second, by a cool-down that could lower nothing.)
    target = max(target, config.minimum)
    low_since = state.low_since
    if target < current:
        low_since = demand.at if low_since is None else low_since
        waited = demand.at - low_since
        if waited < config.cooldown:
            target = current
            reason = (
                f"held at {current} for the cool-down ({waited:.0f} of {config.cooldown:g} s): "
                f"the work asks for {wanted} ({why})"
            )
        else:
            low_since = None
    else:
        low_since = None

    desired = max(target, config.minimum)
    if config.maximum is not None:
        desired = min(desired, config.maximum)
    if not reason or desired != target:
        reason = _plain(desired, current, wanted, why, config)
    return Decision(desired, running, wanted, reason), PolicyState(
        desired, low_since, state.share_low_since
    )


def _wanted(demand: Demand, config: ScalingConfig, healthy: int) -> tuple[int, str]:
    q, r = demand.queued, demand.running
    slots = max(1, demand.concurrency)
    wanted = math.ceil((r + q) / slots)
    why = f"{q} queued, {r} running, {slots} slots per worker"
    if q > 0 and demand.throughput and demand.throughput > 0:
        busy = sum(1 for w in demand.workers if w.in_flight > 0)
        by_rate = math.ceil(busy + q / (demand.throughput * config.drain_target))
        if by_rate > wanted:
            wanted = by_rate
            why = (
                f"{q} queued at {demand.throughput:.1f} tasks/s per worker: "
                f"{config.drain_target:g} s to clear them"
            )
    if q > 0 and demand.oldest_wait > config.max_wait and healthy + 1 > wanted:
        wanted = healthy + 1
        why = f"the oldest of {q} queued waited {demand.oldest_wait:.0f} s"
    return wanted, why


def _saturated(routes: tuple[RouteHeadroom, ...], saturation: float) -> str | None:
    """Why more workers would not help (a route at its limit), or None."""
    worst: RouteHeadroom | None = None
    for route in routes:
        if route.paused:
            return f"route {route.route} is pausing after a 429"
        if route.limited:  # (its limit unknown, its pauses short: at its limit all the same)
            return f"route {route.route} answered {route.limited} 429s in the last seconds"
        if route.utilization is None:
            continue
        # Calls queue for their turn while the route runs near its limit: it is the
        # bottleneck even where the limiter has slowed below the limit after 429s.
        full = route.utilization >= saturation or (
            route.waiting > 0 and route.utilization >= saturation / 2
        )
        if full and (worst is None or (worst.utilization or 0) < route.utilization):
            worst = route
    if worst is None:
        return None
    why = f"route {worst.route} is at {100 * (worst.utilization or 0):.0f} % of its limit"
    return why + (f", {worst.waiting} calls waiting" if worst.waiting else "")


def _plain(desired: int, current: int, wanted: int, why: str, config: ScalingConfig) -> str:
    if config.maximum is not None and wanted > config.maximum and desired == config.maximum:
        return f"at the maximum of {desired}: the work asks for {wanted} ({why})"
    if wanted < config.minimum and desired == config.minimum:
        return f"at the minimum of {desired} ({why})"
    if desired > current:
        return f"scaling up to {desired} ({why})"
    if desired < current:
        return f"scaling down to {desired} after the cool-down ({why})"
    return f"steady at {desired} ({why})"
