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
        │   ├── OutputError    the agent returned something that cannot be stored as JSON
        │   ├── UnawaitedWork  (--strict) the agent made a step or call it never awaited
        │   └── ProviderRejected    an LLM provider refused the request (400, 404, 422...)
        │       └── ProviderAuthError   ... because of the credentials (401, 403);
        │                               ``fatal``: the runtime stops the whole run
        ├── ProviderError      an LLM provider call failed in a way that may pass (retried)
        │   ├── RateLimited         429: over the provider's rate limit
        │   ├── ProviderUnavailable 5xx, timeout, connection reset, stream gone idle
        │   └── MalformedResponse   an answer whose body cannot be understood
        ├── TaskTimeout        the instance ran past its agent's timeout (retried)
        │   └── DeadlineExceeded    ... past its ``deadline``, waits included (not retried)
        └── AgentCrash         the agent raised a BaseException that is not an Exception
                               (e.g. SystemExit); caught so it cannot take the worker down

Retryability is decided by the class (``retryable``), never by matching messages:
every exception that is not a :class:`Permanent` (or a pydantic validation error, which
means bad data, not bad luck) is retried until the agent's retry policy gives up.
Cancellation (:class:`asyncio.CancelledError`) is never caught by a generic handler.

Provider errors are raised by ``legion.llm``, which translates HTTP statuses and transport
failures into them exactly once, at the provider boundary (``raise ... from exc``). A
:class:`ProviderAuthError` is ``fatal``: every other task would fail the same way, so the
runtime stops the whole run instead of failing tasks one by one.
"""

from __future__ import annotations

from typing import Any, ClassVar

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


class UnawaitedWork(Permanent):
    """Raised (in strict mode) when an agent made a step or call and never awaited it."""


class ProviderRejected(Permanent):
    """Raised when an LLM provider refuses a request (400, 404, 422...): retrying the same
    request cannot help. The message says what the provider said."""

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), str(self), {"provider": self.provider, "status": self.status}),
        )


class ProviderAuthError(ProviderRejected):
    """Raised when an LLM provider rejects the credentials (401, 403)."""

    fatal: ClassVar[bool] = True
    """Stop the whole run: every other task would fail the same way."""


class ProviderError(AgentError):
    """Base of the LLM provider failures that may pass on their own; retried.

    ``status`` is the HTTP status when the provider answered (``None`` for a timeout or a
    broken connection); ``retry_after`` is the wait in seconds the provider asked for, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"provider": self.provider, "status": self.status, "retry_after": self.retry_after}
        return (_rebuild, (type(self), str(self), fields))


class RateLimited(ProviderError):
    """Raised when a provider answers 429: over its rate limit."""


class ProviderUnavailable(ProviderError):
    """Raised on a 5xx answer, a timeout, a broken connection or a stream gone idle."""


class MalformedResponse(ProviderError):
    """Raised when a provider's answer cannot be parsed (invalid JSON, missing fields)."""


class TaskTimeout(AgentError):
    """Raised when an agent instance runs past its timeout."""


class DeadlineExceeded(TaskTimeout):
    """Raised when an attempt reaches its agent's ``deadline`` (waits included); the
    message says what it waited for. Not retried: the deadline bounds the whole."""

    retryable = False


class AgentCrash(AgentError):
    """Wraps a ``BaseException`` (not an ``Exception``, not cancellation) raised by agent code."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(f"{type(original).__name__}: {original}")


def _rebuild(cls: type[Exception], message: str, fields: dict[str, Any]) -> Exception:
    """Unpickle an error whose constructor takes keyword-only fields."""
    return cls(message, **fields)


def is_retryable(exc: BaseException) -> bool:
    """Whether a task that ended with ``exc`` should be tried again."""
    if isinstance(exc, AgentError):
        return exc.retryable
    # A validation error means bad data, which retrying cannot fix.
    return not isinstance(exc, ValidationError)
