"""What `legion run` says of the other workers on its store while it collects results.

- `WorkerWatch`: with ``--no-local-worker`` the run only submits and collects, and
  `legion worker` processes on the store run its tasks. When none serves its agent — none
  started yet, or the last one exited (a budget spent, a deploy, a crash) — the tasks wait
  in the queue and the run with them, which looks like a hang. It says so: at the start,
  and each time the last worker goes.
- `OthersWatch`: a run's budget (``--max-cost``, ``--max-tokens``, ``--max-calls``) holds
  the calls of its own local worker. Other workers on the store that serve its agent lease
  some of its tasks, and spend outside it (a run of 300 one-call tasks under
  ``--max-calls 100`` paid for 300). It says so, once, when it sees one.
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


class OthersWatch:
    """Checks, at most every ``every`` seconds, whether live workers on ``store`` other
    than ``mine`` serve ``agent``, while a budget holds the run's own calls; prints a
    warning the first time it sees some."""

    def __init__(
        self,
        store: Store,
        agent: str,
        mine: str,
        console: Console,
        *,
        every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store, self._agent, self._mine = store, agent, mine
        self._console, self._every, self._clock = console, every, clock
        self._said = False
        self._next = 0.0

    async def check(self) -> None:
        """Look (see `WorkerWatch.check`), until it has said it once."""
        now = self._clock()
        if self._said or now < self._next:
            return
        self._next = now + self._every
        try:
            workers, at = await self._store.workers(), await self._store.now()
        except StoreError:
            return
        others = [w for w in workers if w.id != self._mine]
        if self._agent not in served_agents(others, at):
            return
        n = sum(1 for w in others if self._agent in served_agents([w], at))
        self._said = True
        self._console.print(
            f"warning: {n} other live worker(s) on this store serve agent {self._agent!r}: "
            "the tasks they take spend outside this run's budget, which holds the calls "
            "made in this process; give each `legion worker` its own --max-cost/"
            "--max-tokens/--max-calls, or run against a store no other worker serves",
            style="yellow",
            highlight=False,
        )
