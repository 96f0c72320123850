"""Schedules: a task per cron tick, exactly once however many workers watch.

Every worker looks at the due schedules on its reaper pass (and wakes waiting tasks whose
timer passed, see `tick`). A tick is claimed by moving the schedule's next tick
forward with a compare-and-set, and its task is submitted in the same transaction with
the idempotency key ``schedule:<name>:<tick>``: of several workers that see a tick due,
exactly one submits it.

A tick is claimed only by a worker that serves the schedule's agent: its task is made as
that agent makes its tasks (its attempts, unless the schedule names them, and the
resources it needs), and while no worker serves the agent its ticks wait, as missed ones.

Missed ticks (no worker ran while they passed, or none served the agent): the schedule
runs **once**, its task named for the first tick it missed, then goes on from the next
tick after now; it never runs a backlog of ticks.

A tick whose schedule's last task has not ended (it outlasted its period) runs beside it
by default (``overlap="allow"``); with ``overlap="skip"`` it is passed over, and the
schedule goes on from the next tick after now.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from legion.agent import Agent
from legion.errors import StoreError
from legion.store.base import Store
from legion.store.waiting import OVERLAPS, Schedule
from legion.task import NewTask
from legion.waiting.cron import Cron

log = logging.getLogger("legion.schedules")


CLOCK_SLACK = 60.0
"""Seconds a clock may run ahead of another before a next tick it set is taken back."""

AGENTS_ATTEMPTS = 0
"""A schedule's ``max_attempts`` that means: as many as its agent gives its tasks."""


def schedule(
    name: str,
    cron: str,
    agent: str,
    input: bytes,
    now: float,
    *,
    max_attempts: int = AGENTS_ATTEMPTS,
    overlap: str = "allow",
) -> Schedule:
    """A new schedule whose first tick is the first after ``now`` (the cron and the
    overlap policy are checked)."""
    check_name(name)
    if overlap not in OVERLAPS:
        raise ValueError(f"bad overlap {overlap!r}: give one of {', '.join(OVERLAPS)}")
    first = Cron.parse(cron).next_after(now)
    return Schedule(name, cron, agent, input, max_attempts, first, now, overlap)


def check_name(name: str) -> None:
    """Refuse a name that `legion schedule list` could not show on one line as given:
    empty, padded with spaces, or holding a control character (a tab, a newline)."""
    if not name or name != name.strip() or any(c < " " or c == "\x7f" for c in name):
        raise ValueError(
            f"bad schedule name {name!r}: give a name without control characters (tabs, "
            "newlines) and without spaces around it"
        )


def tick_key(name: str, tick: float) -> str:
    return f"schedule:{name}:{_utc(tick)}"


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%MZ")


async def run_due(store: Store, now: float, agents: Mapping[str, Agent]) -> int:
    """Submit the task of every due tick of ``agents``' schedules that no other worker
    claimed; answer how many. A schedule that fails is logged and skipped: the others go
    on."""
    started = 0
    for s in await store.schedules():
        agent = agents.get(s.agent)
        if agent is None:
            continue  # (a worker that serves it claims it: made as its agent makes tasks)
        try:
            cron = Cron.parse(s.cron)
            nxt = cron.next_after(now)  # missed ticks collapse into this one run
            if s.next_tick > now:
                await _back_from_the_future(store, s, cron, now)
                continue
        except ValueError as exc:  # (a cron with no date in the next five years, too)
            log.error("schedule %r: %s", s.name, exc)
            continue
        if await _still_running(store, s):
            if await store.move_tick(s, nxt):
                log.info(
                    "schedule %r: tick %s skipped: its last task %s has not ended "
                    "(overlap=skip); next tick %s",
                    s.name,
                    _utc(s.next_tick),
                    s.last_task,
                    _utc(nxt),
                )
            continue
        attempts = s.max_attempts or agent.options.retry.max_attempts
        key = tick_key(s.name, s.next_tick)
        task = NewTask(s.agent, s.input, key, max_attempts=attempts, needs=agent.needs)
        try:
            if await store.claim_tick(s, nxt, task, now):
                started += 1
        except StoreError:
            raise  # (the reaper's pass fails as a whole, and is tried again)
        except Exception as exc:
            log.error("schedule %r: its tick %s was not run: %s", s.name, key, exc)
    return started


async def _still_running(store: Store, s: Schedule) -> bool:
    """Whether ``s`` skips overlaps and the task of its last tick has not ended (a task
    purged since has ended)."""
    if s.overlap != "skip" or s.last_task is None:
        return False
    status = (await store.statuses([s.last_task])).get(s.last_task)
    return status is not None and not status.terminal


async def _back_from_the_future(store: Store, s: Schedule, cron: Cron, now: float) -> None:
    """A schedule's next tick later than its cron's next one after ``now`` (by more
    than `CLOCK_SLACK`) was set by a clock that ran ahead (stepped back since, or
    another machine's): moved back to the cron's next tick, it runs on time again
    instead of falling silent for as long as that clock was ahead."""
    if s.next_tick > cron.next_after(now + CLOCK_SLACK):
        nxt = cron.next_after(now)
        if await store.move_tick(s, nxt):
            log.warning(
                "schedule %r: its next tick %s was set by a clock ahead of this one; "
                "moved back to %s",
                s.name,
                _utc(s.next_tick),
                _utc(nxt),
            )


async def tick(store: Store, now: float, agents: Mapping[str, Agent]) -> int:
    """One pass of the timers: wake the waiting tasks whose time came, run the due
    schedules of ``agents``; answer how many tasks became ready."""
    woken = await store.wake_due(now)
    return woken + await run_due(store, now, agents)
