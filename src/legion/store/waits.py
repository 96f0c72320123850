"""How long the store's calls wait before the store begins them.

A store adds each call's wait as it begins (SQLite: for the store's thread; PostgreSQL:
for a connection of its pool); the HTTP server's load shedding reads the mean over the
last while (`legion.server.admission.AdaptiveLimit`): requests that queue for the store
are what a smaller bound on requests in progress makes faster, and nothing else is.
"""

from __future__ import annotations

import threading


class QueueWaits:
    """Seconds waited, summed as calls begin (from any thread), and read as a mean since
    the last read."""

    __slots__ = ("_count", "_lock", "_sum")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sum = 0.0
        self._count = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """``count`` calls waited ``seconds`` in all."""
        with self._lock:
            self._sum += seconds
            self._count += count

    def take(self) -> float | None:
        """The mean wait of the calls added since the last read; ``None``: none."""
        with self._lock:
            total, count = self._sum, self._count
            self._sum, self._count = 0.0, 0
        return total / count if count else None
