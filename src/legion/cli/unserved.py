"""`legion run --no-local-worker`: whether a live worker serves the run's agent.

Such a run only submits and collects: `legion worker` processes on the store run its
tasks. When none serves its agent — none started yet, or the last one exited (a budget
spent, a deploy, a crash) — the tasks wait in the queue and the run with them, which looks
like a hang. The watch says so: at the start, and each time the last worker goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console

from legion.errors import StoreError
from legion.store import Store, redact_url
from legion.store.types import served_agents


class WorkerWatch:
    """Checks, at most every ``every`` seconds, whether a live worker on ``store`` serves
    ``agent``; prints a line when none does where one did (or at the first check)."""

    def __init__(
        self,
        store: Store,
        agent: str,
        url: str,
        console: Console,
        *,
        every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store, self._agent, self._where = store, agent, redact_url(url)
        self._console, self._every, self._clock = console, every, clock
        self._served = True  # (as if one did: the first check says so when none does)
        self._first = True
        self._next = 0.0

    async def check(self) -> None:
        """Look, unless the last look was under ``every`` seconds ago. A store that does
        not answer is no news: the next look tells."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._every
        try:
            workers, at = await self._store.workers(), await self._store.now()
        except StoreError:
            return
        served = self._agent in served_agents(workers, at)
        if self._served and not served:
            self._say()
        self._served, self._first = served, False

    def _say(self) -> None:
        what = "yet" if self._first else "any more"
        self._console.print(
            f"no live worker serves agent {self._agent!r} on {self._where} {what}: its "
            f"tasks wait in the queue until one starts "
            f"(`legion worker --app FILE --store {self._where}`)",
            style="yellow",
            highlight=False,
        )
