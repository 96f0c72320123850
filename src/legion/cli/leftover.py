"""Threads an agent started and left running when a command's work is done.

Python waits for every thread that is not a daemon before the process exits: one thread
an agent left polling for ever kept `legion run` from exiting after it printed its
summary, until it was killed. The command waits for such threads a little (one may be
finishing a write), says which they are, and then exits without them.
"""

from __future__ import annotations

import sys
import threading
import time

from legion.exiting import exit_now, finalization_unsafe

GRACE = 2.0
"""Seconds a command waits for the threads left running before it exits without them."""


OURS = ("legion-sqlite", "legion-vectors")
"""How the names of legion's stores' threads start: they end as soon as what was asked
of them is done (one a closed store let go without waiting for it was named as the
agents' thread). Its other threads (a local model's) are waited for as an agent's."""


def left_running() -> list[threading.Thread]:
    """Threads other than the main one and legion's own, not daemons, still running."""
    main = threading.main_thread()
    return [
        t
        for t in threading.enumerate()
        if t is not main and not t.daemon and t.is_alive() and not t.name.startswith(OURS)
    ]


def exit_past_threads(code: int) -> None:
    """Exit with ``code`` now if threads are left running once `GRACE` has passed (they
    are named on stderr); return, for the usual exit, when there are none."""
    threads = left_running()
    if not threads:
        if finalization_unsafe():  # (a thread left in a library's native code: see there)
            exit_now(code)
        return
    names = ", ".join(repr(t.name) for t in threads[:5]) + (", ..." if len(threads) > 5 else "")
    print(
        f"note: {len(threads)} thread{'s' if len(threads) > 1 else ''} that the agents "
        f"started still run ({names}): waiting {GRACE:g} s for them, then exiting without "
        "them (make such a thread a daemon, or join it before the agent returns)",
        file=sys.stderr,
    )
    deadline = time.monotonic() + GRACE
    try:
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        code = 130
    if not left_running() and not finalization_unsafe():
        return
    exit_now(code)
