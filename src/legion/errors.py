"""The one exception tree of legion.

::

    LegionError
    ├── ConfigError            bad store URL, bad option, bad agent path
    │   └── AgentLoadError     an agent path that does not import or name an agent
    ├── StoreError             the store failed or holds something unexpected
    ├── TaskFailed             rt.result(..., raise_on_failure=True) of a task that did not succeed
    └── AgentError             raised *inside* an agent instance; decides retryability
        ├── Permanent          raise it to fail the task at once, without retrying
        │   ├── InputError     the task's input does not fit the agent's parameters or schema
        │   └── OutputError    the agent returned something that cannot be stored as JSON
        ├── TaskTimeout        the instance ran past its agent's timeout (retried)
        └── AgentCrash         the agent raised a BaseException that is not an Exception
                               (e.g. SystemExit); caught so it cannot take the worker down

Retryability is decided by the class (``retryable``), never by matching messages:
every exception that is not a :class:`Permanent` (or a pydantic validation error, which
means bad data, not bad luck) is retried until the agent's retry policy gives up.
Cancellation (:class:`asyncio.CancelledError`) is never caught by a generic handler.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class LegionError(Exception):
    """Root of every error legion raises."""


class ConfigError(LegionError):
    """Raised when an option, URL or file given to legion is not usable."""


class AgentLoadError(ConfigError):
    """Raised when an agent path (``file.py:func`` or ``pkg.mod:func``) cannot be loaded."""


class StoreError(LegionError):
    """Raised when the store fails or returns something it should not."""


class TaskFailed(LegionError):
    """Raised when a caller asks for the output of a task that did not succeed."""

    def __init__(self, task_id: int, status: str, error: dict[str, Any] | None) -> None:
        self.task_id = task_id
        self.status = status
        self.error = error or {}
        detail = f"{self.error.get('type', '?')}: {self.error.get('message', '')}" if error else ""
        super().__init__(f"task {task_id} is {status}" + (f" ({detail})" if detail else ""))


class AgentError(LegionError):
    """Base of the errors that end an agent instance; ``retryable`` decides what follows."""

    retryable: bool = True


class Permanent(AgentError):
    """Raise inside an agent to fail its task at once: no retry will help."""

    retryable = False


class InputError(Permanent):
    """Raised when a task's input does not fit the agent's parameters or input schema."""


class OutputError(Permanent):
    """Raised when an agent's result (or a step's) cannot be stored as JSON."""


class TaskTimeout(AgentError):
    """Raised when an agent instance runs past its timeout."""


class AgentCrash(AgentError):
    """Wraps a ``BaseException`` (not an ``Exception``, not cancellation) raised by agent code."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(f"{type(original).__name__}: {original}")


def is_retryable(exc: BaseException) -> bool:
    """Whether a task that ended with ``exc`` should be tried again."""
    if isinstance(exc, AgentError):
        return exc.retryable
    # A validation error means bad data, which retrying cannot fix.
    return not isinstance(exc, ValidationError)
