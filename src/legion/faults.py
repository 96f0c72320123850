"""Fault hooks at the commit points, for crash tests that hit each point on purpose.

``LEGION_FAULT=point:action[:n]`` (read once, at import) arms one hook; unset, every hook
is one test of a module constant. Points:

- ``step-ran``: a step's function (an LLM call, a tool) returned, before its record;
- ``step-recorded``: a step's record is durable, before the attempt's completion;
- ``completed``: a completion is committed, before anyone is told (a waiter, a log);
- ``store-opened``: ``legion worker`` or ``legion serve`` opened its store, before the
  worker or server starts.

Actions: ``kill`` (SIGKILL this process), ``exit`` (``os._exit(70)``, no clean-up),
``stop`` (SIGSTOP: the process freezes until a SIGCONT). ``n``: act at the n-th time the
point is reached (default 1); the other times pass.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

POINTS = ("step-ran", "step-recorded", "completed", "store-opened")
ACTIONS = ("kill", "exit", "stop")


def _parse(spec: str) -> tuple[str, str, int] | None:
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in POINTS or parts[1] not in ACTIONS:
        _refuse(
            f"LEGION_FAULT={spec!r}: expected point:action[:n] with a point in "
            f"{', '.join(POINTS)} and an action in {', '.join(ACTIONS)}"
        )
    try:
        n = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        _refuse(f"LEGION_FAULT={spec!r}: n must be a whole number")
    return parts[0], parts[1], n


def _refuse(message: str) -> NoReturn:
    """Stop with exit code 2, as every command does on a bad setting."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)


_ARMED = _parse(os.environ.get("LEGION_FAULT", ""))
ARMED = _ARMED is not None  # test this before calling hit(): nothing else costs when unset
_seen = 0


def hit(point: str) -> None:
    """Reached ``point``: act if this is the armed point's n-th time."""
    global _seen
    if _ARMED is None or point != _ARMED[0]:
        return
    _seen += 1
    if _seen != _ARMED[2]:
        return
    action = _ARMED[1]
    sys.stderr.write(f"legion: fault {point}:{action} (LEGION_FAULT)\n")
    sys.stderr.flush()
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        os._exit(70)
