"""A task's descendants: the child tasks it started (``ctx.spawn``, ``ctx.map``), theirs,
and so on; what ``cancel`` and ``retry`` with children reach along with the task."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from legion.errors import StillStopping
from legion.store.waiting import WaitingStore
from legion.task import TaskStatus

if TYPE_CHECKING:
    from legion.store.base import Store

DESCENDANTS_AT_MOST = 100_000
"""The most descendants one walk visits (a guard against a tree without end)."""

RETRIABLE = frozenset({TaskStatus.DEAD, TaskStatus.FAILED, TaskStatus.CANCELLED})
"""What a retry queues again."""


def cascades(status: TaskStatus | None) -> bool:
    """Whether a cancel that left its task in ``status`` reaches the task's descendants:
    only when the task itself is (or is being) cancelled. One that had ended otherwise,
    or does not exist, is refused, and a refused cancel changes nothing."""
    return status is not None and (not status.terminal or status is TaskStatus.CANCELLED)


async def descendants(
    store: WaitingStore,
    task_id: int,
    which: Callable[[TaskStatus], bool],
    through: Callable[[TaskStatus], bool] = lambda status: True,
) -> list[int]:
    """The ids of ``task_id``'s descendants whose status ``which`` accepts, parents before
    their children; the children of one whose status ``through`` refuses are not walked."""
    found: list[int] = []
    seen = {task_id}
    level = [task_id]
    while level and len(seen) <= DESCENDANTS_AT_MOST:
        below: list[int] = []
        for parent in level:
            for child in await store.children(parent):
                if child.id in seen:
                    continue
                seen.add(child.id)
                if through(child.status):
                    below.append(child.id)
                if which(child.status):
                    found.append(child.id)
        level = below
    return found


async def unfinished_descendants(store: WaitingStore, task_id: int) -> list[int]:
    """The descendants that have not finished, parents first: what a cancel with children
    stops (a finished child's own children are walked too: they may still run)."""
    return await descendants(store, task_id, lambda status: not status.terminal)


async def retriable_descendants(store: WaitingStore, task_id: int) -> list[int]:
    """The descendants that ended dead, failed or cancelled, deepest first: what a retry
    with children queues again, children before their parents (a rerun parent finds its
    children by their keys: one still ended so would fail it again, one queued it waits
    for). Below a child that succeeded nothing is retried: it has its outputs, and its
    failed children were its own to handle (it caught their failure)."""
    found = await descendants(store, task_id, RETRIABLE.__contains__, RETRIABLE.__contains__)
    return found[::-1]


async def requeue_descendants(store: Store, task_id: int) -> list[int] | None:
    """A retry with children, before the task itself: queue again its descendants that
    ended dead, failed or cancelled (`retriable_descendants`); answer those queued, or
    ``None``, with nothing queued, when the task itself cannot be retried (a refused
    retry changes nothing). Raises `legion.errors.StillStopping`, queueing nothing, while
    a descendant below what ended has not ended yet (a cancel not yet taken)."""
    task = await store.get(task_id)
    if task is None or task.status not in RETRIABLE:
        return None
    # Below what ended, one that has not and whose cancel was asked (not yet taken by its
    # worker) would end cancelled after its parent reran, and fail it again. (One left
    # running, its cancel never asked, is found by the rerun parent and waited for.)
    unfinished = await descendants(
        store, task_id, lambda s: not s.terminal, lambda s: s in RETRIABLE or not s.terminal
    )
    stopping = []
    for child in unfinished:
        info = await store.get(child)
        if info is not None and info.cancel_requested and not info.status.terminal:
            stopping.append(child)
    if stopping:
        raise StillStopping(task_id, stopping)
    return [
        child
        for child in await retriable_descendants(store, task_id)
        if await store.requeue_one(child)
    ]
