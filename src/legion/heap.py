"""What the cyclic garbage collector scans while workers (and the HTTP server) run.

A worker's process holds tens of thousands of long-lived objects by the time it starts
leasing (modules, classes, functions, the store, the LLM client), and ``legion serve``
more (FastAPI, pydantic, the routes): every full collection would scan all of them again,
while the objects that come and go are the instances' and the requests'.
`settle` collects once and moves everything alive into the permanent generation
(``gc.freeze()``), so that later collections scan only what was made since; when the
last user of the process stops, `unsettle` gives them back to the collector.
"""

from __future__ import annotations

import gc

_users = 0


def settle() -> None:
    """Collect, then freeze what survives (the first of the process's running workers or
    servers)."""
    global _users
    _users += 1
    if _users == 1 and gc.isenabled():
        gc.collect()
        gc.freeze()


def unsettle() -> None:
    """The worker or server that called `settle` stops: the last one unfreezes."""
    global _users
    _users = max(0, _users - 1)
    if _users == 0:
        gc.unfreeze()
