"""How long a thread waits for the GIL while workers run.

A worker's event loop runs Python almost without pause under load, and the SQLite
store's thread needs the GIL back after every statement it runs (the driver lets go of
it for the statement). Python hands the GIL over to a waiting thread only when the
holder lets go or after the switch interval, 5 ms by default: the store's thread waited
about that long several times per lease and per group commit, so a transaction's wall
time was twice its CPU time, and the loop then sat idle waiting for the next lease (see
"The SQLite store's thread and the GIL" in benchmarks/README.md).

While a worker runs, `hand_over_sooner` sets the interval to `INTERVAL` (0.2 ms): no-op
tasks on SQLite +12-25 %, the same CPU per task. It changes only Python's default: an
application that set an interval of its own keeps it, and when the last worker stops,
the default comes back unless the application changed it meanwhile.
"""

from __future__ import annotations

import sys

INTERVAL = 0.0002  # seconds
DEFAULT = 0.005  # Python's own

_users = 0
_ours = False


def hand_over_sooner() -> None:
    """A worker starts: the first one shortens the switch interval, if it is Python's
    default."""
    global _users, _ours
    _users += 1
    if _users == 1 and _is(DEFAULT):
        sys.setswitchinterval(INTERVAL)
        _ours = True


def hand_over_as_before() -> None:
    """The worker that called `hand_over_sooner` stops: the last one puts the default
    back (unless the application set another interval meanwhile)."""
    global _users, _ours
    _users = max(0, _users - 1)
    if _users == 0 and _ours:
        if _is(INTERVAL):
            sys.setswitchinterval(DEFAULT)
        _ours = False


def _is(seconds: float) -> bool:
    """Whether the switch interval is ``seconds`` (Python keeps it in microseconds)."""
    return round(sys.getswitchinterval() * 1e6) == round(seconds * 1e6)
