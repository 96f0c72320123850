"""Tenants take turns at the store's queue.

A lease takes an agent's queued tasks by priority first (a higher lane goes first,
whatever its tenant), then, within a lane, the tenant with the fewest of the agent's
tasks running goes next (counting those this lease has taken), then the older task. A
tenant's backlog of thousands therefore no longer holds back the few tasks another
tenant submits after it: each lease alternates between them, and a tenant whose tasks
hang, holding slots, is the last served. A worker may cap each tenant's tasks of an
agent running at once (``legion worker --tenant-max-running N``): a tenant at its cap
is left out of the lease.

Each tenant's own tasks are read in queue order (its index: agent, tenant, priority,
age), an even share of the lease at first, and merged here. A tenant whose tasks read
ran out while it may have more stays in line with what its next can be at best (its last
one's priority, its count running); only when that comes first does the merge ask for
more of that tenant alone (`Turns.merge` answers it), twice as many each time. So a
lease over many tenants reads about what it takes, and rarely a tenant twice. With one
tenant queued, none of this runs: the store leases in queue order as it always did.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Generic, TypeVar

Row = TypeVar("Row")
Read = tuple[int, int, Row]  # (priority, id, row), in the tenant's queue order


def share_of(need: int, tenants: int) -> int:
    """How many of each tenant's tasks the first read takes: an even share of ``need``."""
    return max(1, math.ceil(need / max(1, tenants)))


class Turns(Generic[Row]):
    """One lease's turns over the tenants that have tasks queued for one agent.

    ``running`` holds each tenant's tasks of the agent running now (the store's counts).
    Give each tenant's first tasks with `read`, then call `merge` until it answers
    ``None``, giving the tenant it names more of its tasks (`read` again) each time;
    `taken` holds the rows to lease, in the turns' order."""

    def __init__(self, running: dict[str, int], need: int, cap: int | None = None) -> None:
        self.running = running
        self.need = need
        self.cap = cap  # (the most of a tenant's tasks of the agent running at once)
        self.taken: list[Row] = []
        self._rows: dict[str, Sequence[Read[Row]]] = {}
        self._at: dict[str, int] = {}
        self._full: dict[str, bool] = {}
        self._asked: dict[str, int] = {}
        # (-priority, running, id, tenant, 1 for a tenant whose next is not read yet)
        self._heap: list[tuple[int, int, int, str, int]] = []

    def read(self, tenant: str, rows: Sequence[Read[Row]], asked: int) -> None:
        """``tenant``'s next tasks (after those read before), ``asked`` of them asked for:
        a tenant that gave fewer has no more."""
        self._rows[tenant], self._at[tenant] = rows, 0
        self._full[tenant] = len(rows) >= asked
        self._asked[tenant] = asked
        if rows:
            self._push(tenant)

    def more(self, tenant: str) -> int:
        """How many more of ``tenant``'s tasks to read: twice as many as last time, and no
        more than the lease still takes."""
        return max(1, min(self.wanted(), 2 * self._asked.get(tenant, 1)))

    def last(self, tenant: str) -> tuple[int, int] | None:
        """The (priority, id) of ``tenant``'s last task read: its next are after it."""
        rows = self._rows.get(tenant)
        return (rows[-1][0], rows[-1][1]) if rows else None

    def merge(self) -> str | None:
        """Take tasks in turn until the lease has ``need`` or every tenant's are taken;
        answer the tenant whose tasks read ran out while it may have more (read more of
        it, then merge again), or ``None`` when done."""
        heap = self._heap
        while heap and len(self.taken) < self.need:
            _, _, _, tenant, unread = heapq.heappop(heap)
            if unread:
                return tenant  # its next task, not read yet, may go before any read
            rows, at = self._rows[tenant], self._at[tenant]
            priority, task_id, row = rows[at]
            self.taken.append(row)
            self._at[tenant] = at + 1
            self.running[tenant] = self.running.get(tenant, 0) + 1
            if at + 1 < len(rows):
                self._push(tenant)
            elif self._full[tenant] and not self._capped(tenant):
                # In line with the best its next can be: no higher a priority, a later id.
                entry = (-priority, self.running[tenant], task_id, tenant, 1)
                heapq.heappush(heap, entry)
        return None

    def wanted(self) -> int:
        """How many more tasks the lease takes."""
        return self.need - len(self.taken)

    def _capped(self, tenant: str) -> bool:
        return self.cap is not None and self.running.get(tenant, 0) >= self.cap

    def _push(self, tenant: str) -> None:
        if self._capped(tenant):
            return
        priority, task_id, _ = self._rows[tenant][self._at[tenant]]
        entry = (-priority, self.running.get(tenant, 0), task_id, tenant, 0)
        heapq.heappush(self._heap, entry)
