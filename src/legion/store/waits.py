"""How long submissions wait for the store before it begins writing them.

A store adds each submission's wait as its writing begins; the HTTP server's load
shedding reads the mean over the last while (`legion.server.admission.AdaptiveLimit`):
requests that queue for the store's writer are what a smaller bound on requests in
progress makes faster, and nothing else is.
"""

from __future__ import annotations

import threading


class SubmitWaits:
    """Seconds waited, summed as submissions begin to be written (from any thread), and
    read as a mean since the last read."""

    __slots__ = ("_count", "_lock", "_sum")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sum = 0.0
        self._count = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """``count`` submissions waited ``seconds`` in all."""
        with self._lock:
            self._sum += seconds
            self._count += count

    def take(self) -> float | None:
        """The mean wait of the submissions added since the last call; ``None``: none."""
        with self._lock:
            total, count = self._sum, self._count
            self._sum, self._count = 0.0, 0
        return total / count if count else None
