"""``Ahead``: tasks a worker leased ahead of its free slots, to start the moment one frees
(and ``Held``, what it shares with the group of suspects a busy worker holds until it is
idle: see `legion.run.worker`).

Without them, a slot that frees waits for the worker to ask the store for more work and
for the answer: with short tasks (50 ms of I/O each, 1,000 at once) that round trip, behind
the group commits in the store's queue, left a fifth of the slots empty at any time.

How many to hold is measured, not guessed: twice the most instances that ended while one
of the last `WINDOW` lease calls was out, at most ``cap``. Short tasks end by the hundred
during a lease call (in bursts: the window keeps the hold through the calls between two),
so the worker holds enough to cover the next call; long ones (an agent waiting seconds
on a model) end by the few, and the worker holds none: in a fleet, no worker sits on
tasks another could start now.

A lease held ahead is a lease like any other: the heartbeat extends it, a stop or an
overload gives it back unrun (not charged), a crash leaves it to the reaper as it leaves
the running ones (uncharged, run apart next, as every task that shared the dead worker).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Set

from legion.task import Lease

WINDOW = 8
"""How many lease calls the hold is sized over."""


class Held:
    """Leases a worker holds and has not started, oldest first: a lease like any other
    (the heartbeat extends it, a stop gives it back unrun)."""

    __slots__ = ("_leases",)

    def __init__(self) -> None:
        self._leases: deque[Lease] = deque()

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, task_id: int) -> bool:
        return any(lease.id == task_id for lease in self._leases)

    def ids(self) -> list[int]:
        return [lease.id for lease in self._leases]

    def hold(self, leases: list[Lease]) -> None:
        self._leases.extend(leases)

    def pop(self) -> Lease:
        return self._leases.popleft()

    def take(self, n: int) -> list[Lease]:
        """Up to ``n`` leases, oldest first."""
        return [self._leases.popleft() for _ in range(min(n, len(self._leases)))]

    def take_all(self) -> list[Lease]:
        taken = list(self._leases)
        self._leases.clear()
        return taken

    def remove(self, task_id: int) -> Lease | None:
        for lease in self._leases:
            if lease.id == task_id:
                self._leases.remove(lease)
                return lease
        return None

    def drop(self, gone: Set[int]) -> int:
        """Forget the leases of these tasks (no longer this worker's); answer how many
        of them it held."""
        before = len(self._leases)
        self._leases = deque(lease for lease in self._leases if lease.id not in gone)
        return before - len(self._leases)


class Ahead(Held):
    """The leases held ahead, oldest first, and how many the worker wants to hold."""

    __slots__ = ("_during", "_ended", "_mark", "cap", "target")

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.target = 0
        self._during: deque[int] = deque(maxlen=WINDOW)  # ends during each lease call
        self._ended = 0  # instances ended so far (the worker counts them)
        self._mark = 0  # ... when the lease call under way was sent

    def wanted(self) -> int:
        """How many more to lease ahead."""
        return max(0, self.target - len(self._leases))

    def ended(self) -> None:
        """An instance ended (its slot is free)."""
        self._ended += 1

    def lease_sent(self) -> None:
        self._mark = self._ended

    def lease_answered(self) -> None:
        """Size the next hold by what the lease call just answered took to come back."""
        self._during.append(self._ended - self._mark)
        self.target = min(self.cap, 2 * max(self._during))
