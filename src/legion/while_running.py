"""A process-wide setting that legion changes while its workers run, and puts back after.

`legion.gil` (the GIL's switch interval) and `legion.heap` (the collector's young
generation) each keep one. The first worker to start sets the running value, if the
setting still holds Python's default; the last one to stop puts the default back, if the
setting still holds the running value. An application that chose a value of its own,
before the workers start or while they run, keeps it.
"""

from __future__ import annotations

from collections.abc import Callable


class WhileRunning:
    """One setting, read and written through ``read`` and ``write``; ``default`` and
    ``running`` are compared with what ``read`` answers."""

    __slots__ = ("_ours", "_read", "_users", "_write", "default", "running")

    def __init__(
        self, read: Callable[[], int], write: Callable[[int], None], *, default: int, running: int
    ) -> None:
        self._read = read
        self._write = write
        self.default = default
        self.running = running
        self._users = 0  # workers running now
        self._ours = False  # whether the value now set is this object's doing

    def begin(self) -> None:
        """A worker starts: the first one sets the running value, over the default only."""
        self._users += 1
        if self._users == 1 and self._read() == self.default:
            self._write(self.running)
            self._ours = True

    def end(self) -> None:
        """The worker that called `begin` stops: the last one puts the default back, over
        the running value only."""
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._ours:
            if self._read() == self.running:
                self._write(self.default)
            self._ours = False
