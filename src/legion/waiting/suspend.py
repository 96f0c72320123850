"""``Suspended``: how an instance leaves its agent's code to wait.

Raised by the waiting calls of the context; the runner ends the attempt with
`legion.task.Outcome.WAITING` and the store keeps the task ``waiting`` with its
`legion.task.Wait`. A ``BaseException``, like cancellation: an agent's
``except Exception`` does not swallow it.
"""

from __future__ import annotations

from legion.task import Wait


class Suspended(BaseException):
    """The instance waits for ``wait``; nothing after the wait has run."""

    def __init__(self, wait: Wait) -> None:
        super().__init__(wait)
        self.wait = wait
