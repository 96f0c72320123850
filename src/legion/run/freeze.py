"""``FreezeGuard``: a worker whose event loop an agent froze records it and exits.

An agent that runs CPU-bound code on the default executor (``while True: pass``) blocks
the event loop: every other instance, the heartbeat and the signal handlers stop with
it, and nothing inside the loop can end it. The guard acts from the watchdog's thread
(see `legion.diagnostics.watchdog`), which keeps running:

- when the loop has been blocked by one instance for longer than that instance's
  timeout, it records the freeze in the store through a connection of its own
  (`legion.store.freeze`: the task is counted a freeze, dead at ``max_freezes``
  with the reason "blocked the event loop for 60 s, 3 times: use executor='process'";
  the worker's other tasks go back to the queue without spending an attempt), logs it
  and exits the process with `FROZE_EXIT_CODE` (the ``--processes`` supervisor
  starts another worker);
- when SIGINT/SIGTERM arrived and the loop stays blocked (it cannot drain), it gives
  every task back to the queue unfinished and exits with 128 + the signal's number.

Work not yet committed is lost with the process (its tasks run again, as after a crash).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from legion.diagnostics.watchdog import Capture

if TYPE_CHECKING:
    from legion.run.runner import Instance

log = logging.getLogger("legion.worker")

FROZE_EXIT_CODE = 4
"""The exit code of a worker that an agent froze."""
NO_TIMEOUT_LIMIT = 300.0
"""How long an agent without a timeout may block the loop before it counts as a freeze."""
SIGNAL_GRACE = 1.0
"""How long a signal waits for a blocked loop before the guard acts on it (seconds)."""


class FreezeGuard:
    def __init__(
        self,
        *,
        url: str | None,
        owner: str,
        find: Callable[[asyncio.Task[object] | None], Instance | None],
        max_freezes: int = 3,
        exit: Callable[[int], NoReturn] = os._exit,
    ) -> None:
        """``find`` answers the instance a task runs for (in the watchdog's thread);
        ``url`` is the store's (None: nothing can be recorded, the worker only exits)."""
        if max_freezes < 1:
            raise ValueError("max_freezes must be >= 1")
        self.url = url
        self.owner = owner
        self.max_freezes = max_freezes
        self._find = find
        self._exit = exit
        self._signal: tuple[int, float] | None = None
        self._acting = threading.Lock()
        # The store's side (a connection of its own, SQL files) loads with the guard, not
        # with legion, and before any freeze: the watchdog's thread imports nothing while
        # the loop is blocked.
        from legion.store.freeze import Freeze, record_freeze, release_worker

        self._freeze, self._record, self._release = Freeze, record_freeze, release_worker

    def signalled(self, signum: int) -> None:
        """A stop signal arrived (called from the signal handler, whatever the loop does)."""
        if self._signal is None:
            self._signal = (signum, time.monotonic())

    def stuck(self, capture: Capture, blocked: float) -> None:
        """(The watchdog's thread.) The loop has been blocked for ``blocked`` seconds."""
        inst = self._find(capture.task)
        if inst is not None:
            timeout = inst.agent.options.timeout
            limit = NO_TIMEOUT_LIMIT if timeout is None else timeout
            if blocked >= limit:
                self._froze(inst, limit, capture)
        signal = self._signal
        if signal is not None and min(blocked, time.monotonic() - signal[1]) >= SIGNAL_GRACE:
            self._stop(signal[0], blocked)

    def _froze(self, inst: Instance, limit: float, capture: Capture) -> None:
        if not self._acting.acquire(blocking=False):
            return
        lease = inst.lease
        site = "".join(
            f'  File "{s.file}", line {s.line}, in {s.function}\n    {s.code}\n'
            for s in reversed(capture.stack)
        )
        timeout = (
            "its %g s timeout"
            if inst.agent.options.timeout is not None
            else ("%g s (it has no timeout)")
        )
        log.error(
            f"task %s (%s) blocked the event loop for more than {timeout}: recording it and "
            "exiting, so that the other tasks run elsewhere (%s)",
            lease.id,
            lease.agent,
            limit,
            "CPU-bound agents belong on executor='process'"
            if capture.busy
            else "a blocking call belongs behind an async call or `asyncio.to_thread`",
        )
        freeze = self._freeze(
            lease.id,
            lease.attempt,
            self.owner,
            limit,
            self.max_freezes,
            time.time(),
            site,
            capture.busy,
        )
        try:
            if self.url is None:
                raise RuntimeError("the worker's store has no URL")
            status = self._record(self.url, freeze)
            log.error("task %s is now %s", lease.id, status or "with another worker")
        except Exception as exc:  # exit anyway: the leases expire and are reclaimed
            log.error("could not record the frozen task %s: %s", lease.id, exc)
        self._leave(FROZE_EXIT_CODE)

    def _stop(self, signum: int, blocked: float) -> None:
        if not self._acting.acquire(blocking=False):
            return
        log.error(
            "stop signal %d while the event loop has been blocked for %.0f s: giving the "
            "tasks back and exiting",
            signum,
            blocked,
        )
        try:
            if self.url is not None:
                self._release(self.url, self.owner, time.time())
        except Exception as exc:
            log.error("could not give the tasks back: %s", exc)
        self._leave(128 + signum)

    def _leave(self, code: int) -> NoReturn:
        logging.shutdown()  # flush the log lines above: os._exit skips every cleanup
        self._exit(code)
