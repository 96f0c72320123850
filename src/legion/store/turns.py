"""Tenants take turns at the store's queue.

A lease takes an agent's queued tasks by priority first (a higher lane goes first,
whatever its tenant), then, within a lane, the tenant with the fewest of the agent's
tasks running goes next (counting those this lease has taken), then the older task. A
tenant's backlog of thousands therefore no longer holds back the few tasks another
tenant submits after it: each lease alternates between them, and a tenant whose tasks
hang, holding slots, is the last served.

Each tenant's own tasks are read in queue order (its index: agent, tenant, priority,
age), ``share`` at a time, and merged here. When the tenant that should go next has used
up the tasks read for it and may have more (it had ``share``), the merge stops there: the
store leases what it took and reads again for the rest (`Turns.rest`). With one tenant
queued, none of this runs: the store leases in queue order as it always did.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Row = TypeVar("Row")


def share_of(need: int, tenants: int) -> int:
    """How many of each tenant's tasks a pass reads: an even share of ``need``."""
    return max(1, math.ceil(need / max(1, tenants)))


@dataclass
class Turns(Generic[Row]):
    """One lease's turns over the tenants that have tasks queued for one agent.

    ``running`` holds each tenant's tasks running now (the store's counts); it grows as
    passes take tasks, so a later pass goes on where the last one stopped."""

    running: dict[str, int]
    need: int
    rest: list[str] = field(default_factory=list)

    def take(self, read: Mapping[str, Sequence[tuple[int, int, Row]]], share: int) -> list[Row]:
        """Merge the tasks read for each tenant (``(priority, id, row)`` in its queue
        order, at most ``share`` each) and take up to ``need`` of them. Sets ``rest`` to
        the tenants that may have more (another pass reads them), or to nothing when this
        pass is the last."""
        heap: list[tuple[int, int, int, str, int]] = []
        for tenant, rows in read.items():
            if rows:
                priority, task_id, _ = rows[0]
                heap.append((-priority, self.running.get(tenant, 0), task_id, tenant, 0))
        heapq.heapify(heap)
        taken: list[Row] = []
        self.rest = []
        while heap and len(taken) < self.need:
            _, _, _, tenant, at = heapq.heappop(heap)
            rows = read[tenant]
            taken.append(rows[at][2])
            self.running[tenant] = self.running.get(tenant, 0) + 1
            if at + 1 < len(rows):
                priority, task_id, _ = rows[at + 1]
                entry = (-priority, self.running[tenant], task_id, tenant, at + 1)
                heapq.heappush(heap, entry)
            elif len(rows) >= share:
                # Its next task, not read yet, may go before any read: read again, for
                # each tenant that may have more or has tasks read and not taken.
                left = {t for _, _, _, t, _ in heap}
                self.rest = [t for t, r in read.items() if len(r) >= share or t in left]
                break
        self.need -= len(taken)
        if self.need <= 0:
            self.rest = []
        return taken
