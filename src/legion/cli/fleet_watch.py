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
from collections.abc import Callable, Sequence

from rich.console import Console

from legion.errors import StoreError
from legion.store import Store, WorkerInfo, redact_url
from legion.store.types import served_agents


class _Looks:
    """Looks at the store's workers at most every ``every`` seconds."""

    def __init__(
        self, store: Store, every: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store, self._every, self._clock = store, every, clock
        self._next = 0.0

    async def _look(self) -> tuple[Sequence[WorkerInfo], float] | None:
        """The workers and the store's time; ``None`` when the last look was under
        ``every`` seconds ago, or when the store does not answer (no news: the next look
        tells)."""
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self._every
        try:
            return await self._store.workers(), await self._store.now()
        except StoreError:
            return None


class WorkerWatch(_Looks):
    """Whether a live worker on ``store`` serves ``agent``: prints a line when none does
    where one did (or at the first look)."""

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
        super().__init__(store, every, clock)
        self._agent, self._where, self._console = agent, redact_url(url), console
        self._served = True  # (as if one did: the first look says so when none does)
        self._first = True

    async def check(self) -> None:
        looked = await self._look()
        if looked is None:
            return
        served = self._agent in served_agents(*looked)
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


class OthersWatch(_Looks):
    """Whether live workers on ``store`` other than ``mine`` serve ``agent``, while a
    budget holds the run's own calls: prints a warning the first time it sees some."""

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
        super().__init__(store, every, clock)
        self._agent, self._mine, self._console = agent, mine, console
        self._said = False

    async def check(self) -> None:
        looked = None if self._said else await self._look()
        if looked is None:
            return
        workers, at = looked
        n = sum(1 for w in workers if w.id != self._mine and self._agent in served_agents([w], at))
        if not n:
            return
        self._said = True
        self._console.print(
            f"warning: {n} other live worker(s) on this store serve agent {self._agent!r}: "
            "the tasks they take spend outside this run's budget, which holds the calls "
            "made in this process; give each `legion worker` its own --max-cost/"
            "--max-tokens/--max-calls, or run against a store no other worker serves",
            style="yellow",
            highlight=False,
        )
