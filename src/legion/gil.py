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

from legion.while_running import WhileRunning

INTERVAL = 0.0002  # seconds
DEFAULT = 0.005  # Python's own


def _microseconds() -> int:
    """The switch interval, in the microseconds Python keeps it in."""
    return round(sys.getswitchinterval() * 1e6)


_INTERVAL = WhileRunning(
    _microseconds,
    lambda us: sys.setswitchinterval(us / 1e6),
    default=round(DEFAULT * 1e6),
    running=round(INTERVAL * 1e6),
)

hand_over_sooner = _INTERVAL.begin
"""A worker starts: the first one shortens the switch interval, if it is Python's
default."""

hand_over_as_before = _INTERVAL.end
"""The worker that called `hand_over_sooner` stops: the last one puts the default back
(unless the application set another interval meanwhile)."""
