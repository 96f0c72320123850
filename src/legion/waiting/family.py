"""A task's descendants: the child tasks it started (``ctx.spawn``, ``ctx.map``), theirs,
and so on; what ``cancel`` with children stops along with the task."""

from __future__ import annotations

from legion.store.waiting import WaitingStore

DESCENDANTS_AT_MOST = 100_000
"""The most descendants one cancel walks (a guard against a tree without end)."""


async def unfinished_descendants(store: WaitingStore, task_id: int) -> list[int]:
    """The ids of ``task_id``'s descendants that have not finished, parents before their
    children (a finished child's own children are walked too: they may still run)."""
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
                below.append(child.id)
                if not child.status.terminal:
                    found.append(child.id)
        level = below
    return found
