"""Schedules: a task per cron tick, exactly once however many workers watch.

Every worker looks at the due schedules on its reaper pass (and wakes waiting tasks whose
timer passed, see `tick`). A tick is claimed by moving the schedule's next tick
forward with a compare-and-set, and its task is submitted in the same transaction with
the idempotency key ``schedule:<name>:<tick>``: of several workers that see a tick due,
exactly one submits it.

Missed ticks (no worker ran while they passed): the schedule runs **once** for the latest
of them, then goes on from the next tick after now; it never runs a backlog of ticks.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from legion.store.base import Store
from legion.store.waiting import Schedule
from legion.task import NewTask
from legion.waiting.cron import Cron

log = logging.getLogger("legion.schedules")


def schedule(
    name: str, cron: str, agent: str, input: bytes, now: float, *, max_attempts: int = 4
) -> Schedule:
    """A new schedule whose first tick is the first after ``now`` (the cron is checked)."""
    if not name:
        raise ValueError("a schedule needs a name")
    first = Cron.parse(cron).next_after(now)
    return Schedule(name, cron, agent, input, max_attempts, first, now)


def tick_key(name: str, tick: float) -> str:
    return f"schedule:{name}:{datetime.fromtimestamp(tick, UTC).strftime('%Y-%m-%dT%H:%MZ')}"


async def run_due(store: Store, now: float) -> int:
    """Submit the task of every due tick that no other worker claimed; answer how many."""
    started = 0
    for s in await store.due_schedules(now):
        try:
            cron = Cron.parse(s.cron)
        except ValueError as exc:
            log.error("schedule %r: %s", s.name, exc)
            continue
        nxt = cron.next_after(now)  # missed ticks collapse into this one run
        task = NewTask(s.agent, s.input, tick_key(s.name, s.next_tick), max_attempts=s.max_attempts)
        if await store.claim_tick(s, nxt, task, now):
            started += 1
    return started


async def tick(store: Store, now: float) -> int:
    """One pass of the timers: wake the waiting tasks whose time came, run the due
    schedules; answer how many tasks became ready."""
    woken = await store.wake_due(now)
    return woken + await run_due(store, now)
