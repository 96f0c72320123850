"""Time, injected: the runtime reads wall-clock seconds through a `Clock`.

Stores keep wall-clock timestamps (they are shared between processes and machines);
the in-process schedulers take the same clock so tests can move time instead of
sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float:
        """Seconds since the epoch."""
        ...


system_clock: Clock = time.time
