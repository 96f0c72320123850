"""How soon a supervisor (``--processes``, ``--autoscale``) starts another worker after
one crashed: at once the first time, then after a pause that doubles with each crash in a
row (1 s, 2 s, 4 s ... up to 30 s), so a worker that cannot start (an import that fails,
an agent that kills its process at once) is not restarted in a tight loop. A worker that
ran `HEALTHY` seconds before it stopped ends the streak, and so does one that had
finished tasks (as its supervisor knows it: ``--autoscale`` reads the heartbeats): a
task that brings its process down is spent by its own attempts, and a pause would stop
every other task's work meanwhile."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

FIRST_PAUSE = 1.0
LONGEST_PAUSE = 30.0
HEALTHY = 60.0


class Restarts:
    """The crash streaks of a supervisor's workers: each worker is known by a key (its
    ``--processes`` slot, or its pid), each streak by the worker's key or another
    (``--autoscale`` keeps one for the whole fleet)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: dict[Hashable, float] = {}
        self._streak: dict[Hashable, int] = {}

    def started(self, worker: Hashable) -> None:
        self._started[worker] = self._clock()

    def forget(self, worker: Hashable) -> None:
        """``worker`` stopped for another reason than a crash (or its crash counted with
        another's)."""
        self._started.pop(worker, None)

    def crashed(
        self, worker: Hashable, *, streak: Hashable | None = None, progressed: bool = False
    ) -> float:
        """Seconds to wait before another worker starts in place of ``worker``;
        ``progressed``: it had finished tasks (it started well: a task brought it down),
        which ends the streak as a long run does."""
        now = self._clock()
        ran = now - self._started.pop(worker, now - HEALTHY)
        key = worker if streak is None else streak
        crashes = 0 if ran >= HEALTHY or progressed else self._streak.get(key, 0)
        self._streak[key] = crashes + 1
        return 0.0 if crashes == 0 else min(LONGEST_PAUSE, FIRST_PAUSE * 2 ** (crashes - 1))
