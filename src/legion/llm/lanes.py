"""`Lanes`: the order in which a route's queued calls get their turn.

Calls queue in *lanes*, one per task priority (``priority`` at submit, ``"_priority"`` in
an input line): the highest lane that has callers goes first, so an interactive task's
calls (say priority 10) are served ahead of a batch's (priority 0) within the same limit.
No lane starves: a lane passed over for ``period`` turns in a row (``period`` =
``1 / min_share``; 10 by default) gets the next one, so a lower lane keeps at least
``min_share`` of the starts while it has callers (several starved lanes take turns,
the longest passed over first).

Within a lane, tenants take turns (round robin, one call each): a tenant with ten
thousand calls queued and a tenant with three share the lane's starts evenly while both
wait, so no tenant starves the others of the provider's capacity. Within a tenant, calls
go in their attempts' start order (calls of tasks further along before the first calls
of new ones), then in arrival order.

With one priority and one tenant this is the plain queue: earliest attempt first.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Generic, Protocol, TypeVar


class Queued(Protocol):
    """What a queued caller tells the lanes."""

    @property
    def priority(self) -> int: ...

    @property
    def tenant(self) -> str: ...

    def __lt__(self, other: Any, /) -> bool: ...


Q = TypeVar("Q", bound=Queued)


class _Lane(Generic[Q]):
    __slots__ = ("count", "passed_over_since", "tenants", "turns")

    def __init__(self, since: int) -> None:
        self.tenants: dict[str, list[Q]] = {}  # a heap per tenant
        self.turns: deque[str] = deque()  # tenants with callers, next first
        self.count = 0
        self.passed_over_since = since  # the turn this lane last got (or began waiting)


class Lanes(Generic[Q]):
    """Queued callers by priority lane and tenant (see the module's documentation)."""

    def __init__(self, min_share: float = 0.1) -> None:
        if not 0 < min_share <= 0.5:
            raise ValueError(f"min_share must be in (0, 0.5], got {min_share}")
        self._period = max(2, round(1.0 / min_share))
        self._lanes: dict[int, _Lane[Q]] = {}
        self._turn = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def at_least(self, priority: int) -> int:
        """How many callers wait in lanes of ``priority`` or higher."""
        return sum(lane.count for p, lane in self._lanes.items() if p >= priority)

    def push(self, caller: Q) -> None:
        lane = self._lanes.get(caller.priority)
        if lane is None:
            lane = self._lanes[caller.priority] = _Lane[Q](self._turn)
        heap = lane.tenants.get(caller.tenant)
        if heap is None:
            heap = lane.tenants[caller.tenant] = []
            lane.turns.append(caller.tenant)
        heapq.heappush(heap, caller)
        lane.count += 1
        self._count += 1

    def pop(self) -> Q | None:
        """The caller whose turn is next (``None``: nobody waits)."""
        if not self._count:
            return None
        self._turn += 1
        priority = self._pick()
        lane = self._lanes[priority]
        lane.passed_over_since = self._turn
        tenant = lane.turns.popleft()
        heap = lane.tenants[tenant]
        caller = heapq.heappop(heap)
        if heap:
            lane.turns.append(tenant)
        else:
            del lane.tenants[tenant]
        self._taken(priority, lane)
        return caller

    def take_all(self) -> list[Q]:
        """Every caller, taken out of the queue (which is empty after)."""
        out = [c for lane in self._lanes.values() for heap in lane.tenants.values() for c in heap]
        self._lanes.clear()
        self._count = 0
        return out

    def remove(self, caller: Q) -> None:
        """Take a caller that gave up (cancelled) out of its queue."""
        lane = self._lanes[caller.priority]
        heap = lane.tenants[caller.tenant]
        heap.remove(caller)
        heapq.heapify(heap)
        if not heap:
            del lane.tenants[caller.tenant]
            lane.turns.remove(caller.tenant)
        self._taken(caller.priority, lane)

    def _taken(self, priority: int, lane: _Lane[Q]) -> None:
        lane.count -= 1
        self._count -= 1
        if not lane.count:
            del self._lanes[priority]

    def _pick(self) -> int:
        if len(self._lanes) == 1:
            return next(iter(self._lanes))
        top = max(self._lanes)
        starved = [
            (lane.passed_over_since, priority)
            for priority, lane in self._lanes.items()
            if priority != top and self._turn - lane.passed_over_since >= self._period
        ]
        return min(starved)[1] if starved else top
