"""How long the calling attempt has left, for the LLM client to decide whether a wait
can end in time.

The client asks `remaining` before it waits on a provider's Retry-After: the current
attempt's wait budget (`legion.attempt.CURRENT`, set by the runner), or what a function
bound with `bind` answers. Code that runs outside any attempt (a script calling the
client directly) has no deadline: `remaining` is ``None`` there.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token

from legion import attempt

_REMAINING: ContextVar[Callable[[], float | None] | None] = ContextVar(
    "legion_attempt_remaining", default=None
)


def bind(remaining: Callable[[], float | None]) -> Token[Callable[[], float | None] | None]:
    """Make ``remaining`` the answer of `remaining` in this context (and the tasks it starts)."""
    return _REMAINING.set(remaining)


def remaining() -> float | None:
    """Seconds the current attempt has left (``None``: no deadline, or none known)."""
    source = _REMAINING.get()
    if source is not None:
        return source()
    time_ = attempt.CURRENT.get()
    return None if time_ is None else time_.wait_budget()


def reset(token: Token[Callable[[], float | None] | None]) -> None:
    """Undo the `bind` that returned ``token``."""
    _REMAINING.reset(token)
