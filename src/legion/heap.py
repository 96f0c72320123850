"""What the cyclic garbage collector scans while workers (and the HTTP server) run.

A worker's process holds tens of thousands of long-lived objects by the time it starts
leasing (modules, classes, functions, the store, the LLM client), and ``legion serve``
more (FastAPI, pydantic, the routes): every full collection would scan all of them again,
while the objects that come and go are the instances' and the requests'.
`settle` collects once and moves everything alive into the permanent generation
(``gc.freeze()``), so that later collections scan only what was made since; when the
last user of the process stops, `unsettle` gives them back to the collector. An
application that froze objects of its own is left to manage the permanent generation.

While workers run, `collect_less_often` also raises the young generation's threshold
from Python's 700 to `YOUNG`. Each instance in flight holds seven objects the collector
tracks (its asyncio task, the handle and method wrapper of its first step, its coroutine,
its context, asyncio's weak reference to it, the instance), so at 700 a young collection
ran every hundred instances started, and every tenth of them also scanned the middle
generation, where the instances still running had gone. A finished attempt leaves no
reference cycle behind (the worker, the context and the runner break theirs:
`tests/integration/test_inflight_memory.py`), so collecting less often frees nothing
later that would have been freed sooner. Like `legion.gil`, it changes only Python's
default: an application that set a threshold of its own keeps it, and the default comes
back when the last worker stops (unless the application changed it meanwhile); the older
generations' thresholds are left as they are, and a Python whose default is not 700 (the
incremental collector of 3.14) is left alone. See "The collector while workers run" in
benchmarks/README.md for what it was measured to buy.
"""

from __future__ import annotations

import gc

from legion.while_running import WhileRunning

_users = 0
_froze = False  # whether the first user froze (an application that froze its own: never)

DEFAULT = 700  # Python's own threshold for the young generation (3.11 to 3.13)
YOUNG = 10_000  # the young generation's threshold while workers run


def _set_young(threshold: int) -> None:
    gc.set_threshold(threshold, *gc.get_threshold()[1:])


_YOUNG = WhileRunning(lambda: gc.get_threshold()[0], _set_young, default=DEFAULT, running=YOUNG)


def settle() -> None:
    """Collect, then freeze what survives (the first of the process's running workers or
    servers)."""
    global _users, _froze
    _users += 1
    # An application that froze objects of its own manages the permanent generation
    # itself: unfreezing ours would unfreeze its objects too (a closed Runtime did).
    if _users == 1 and gc.isenabled() and gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
        _froze = True


def unsettle() -> None:
    """The worker or server that called `settle` stops: the last one unfreezes what the
    first froze."""
    global _users, _froze
    _users = max(0, _users - 1)
    if _users == 0 and _froze:
        gc.unfreeze()
        _froze = False


collect_less_often = _YOUNG.begin
"""A worker starts: the first one raises the young generation's threshold, if it is
Python's default."""

collect_as_before = _YOUNG.end
"""The worker that called `collect_less_often` stops: the last one puts the default back
(unless the application set another threshold meanwhile)."""


def give_back() -> None:
    """Collect what cycles hold, and hand the C heap's free memory back to the system
    (glibc's ``malloc_trim``; elsewhere a collection alone): what a worker does before it
    judges its memory past ``--max-memory`` for good (a freed peak stays in the process's
    resident memory until then)."""
    gc.collect()
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
