"""The one exception tree of legion.

::

    LegionError
    ├── ConfigError            bad store URL, bad option, bad agent path
    │   └── AgentLoadError     an agent path that does not import or name an agent
    │       └── AgentChanged   an instance's process found the agent's file changed
    │                          since its worker loaded it: ``fatal`` (the worker stops)
    ├── StoreError             the store failed or holds something unexpected
    │   ├── StoreUnavailable   unreachable, busy, locked or too slow to answer (retried)
    │   └── StorageFull        the store's disk (or its size limit) is full (retried)
    ├── LeaseLost              raised inside an instance whose lease another worker (or a
    │                          reclaim, or a cancel) took: its writes are refused, and the
    │                          worker stops it
    ├── IdempotencyConflict    a submission reused an idempotency key for another input
    ├── NotAwaited             a signal sent for one wait of a task that does not wait for it
    ├── StillStopping          a retry with children while some are still being cancelled
    ├── TaskFailed             rt.result(..., raise_on_failure=True) of a task that did not succeed
    ├── WorkerStopped          rt.map / rt.results: the local worker stopped on an error
    └── AgentError             raised *inside* an agent instance; decides retryability
        ├── Permanent          raise it to fail the task at once, without retrying
        │   ├── InputError     the task's input does not fit the agent's parameters or schema
        │   ├── OutputError    the agent returned something that cannot be stored as JSON
        │   ├── UnawaitedWork  (--strict) the agent made a step or call it never awaited
        │   ├── WaitTimeout    ctx.wait_for / ctx.approval: no signal came within its timeout
        │   ├── WaitError      ctx.wait_for / ctx.sleep called wrongly (a bad event, timeout)
        │   ├── StepNameError  a step's name no record can be kept under
        │   ├── ChildFailed    ctx.spawn / ctx.map: a child task did not succeed
        │   ├── ReplayMismatch a replay asked a recorded call for something else than the
        │   │                  first run did (the agent's code changed while it ran)
        │   └── ProviderRejected    an LLM provider refused the request (400, 404, 422...)
        │       ├── ProviderAuthError   ... because of the credentials (401, 403);
        │       │                       ``fatal``: the runtime stops the whole run
        │       ├── EndpointNotFound    ... with a 404/405 page, no API error: nothing
        │       │                       serves that URL (the route's base URL); ``fatal``
        │       └── ResponseTooLarge    an answer or stream event over the route's size limit
        ├── ProviderError      an LLM provider call failed in a way that may pass (retried)
        │   ├── RateLimited         429: over the provider's rate limit
        │   │   └── RetryAfterTooLong   ... and its Retry-After outlasts the attempt: the task
        │   │                           goes back to the queue until then, no attempt spent
        │   ├── ProviderUnavailable 5xx, timeout, connection reset, stream gone idle
        │   └── MalformedResponse   an answer whose body cannot be understood
        ├── BudgetExceeded     an LLM budget (the run's, its agent's or its tenant's) is
        │                      spent: no call was sent; the task goes back to the queue
        ├── TaskTimeout        the instance ran past its agent's timeout (retried)
        │   └── DeadlineExceeded    ... past its ``deadline``, waits included (not retried)
        └── AgentCrash         the agent raised a BaseException that is not an Exception
                               (e.g. SystemExit); caught so it cannot take the worker down

Retryability is decided by the class (``retryable``), never by matching messages:
every exception that is not a `Permanent` (or a pydantic validation error, which
means bad data, not bad luck) is retried until the agent's retry policy gives up.
Cancellation (`asyncio.CancelledError`) is never caught by a generic handler.

Provider errors are raised by ``legion.llm``, which translates HTTP statuses and transport
failures into them exactly once, at the provider boundary (``raise ... from exc``). A
`ProviderAuthError` or an `EndpointNotFound` is ``fatal``: every other task would fail
the same way, so the runtime stops the whole run instead of failing tasks one by one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, ClassVar


class LegionError(Exception):
    """Root of every error legion raises."""


class ConfigError(LegionError):
    """Raised when an option, URL or file given to legion is not usable."""


def cannot_listen(host: str, port: int, exc: OSError) -> ConfigError:
    """The error of a server that cannot listen on ``host:port`` (the port is taken, the
    address is not this host's...), worded the same by every command that serves: the
    errno's text is the reason (asyncio words a bind error at length)."""
    errno = exc.errno or 0
    reason = os.strerror(errno) if errno > 0 else exc.strerror or str(exc)
    return ConfigError(f"cannot listen on {host}:{port}: {reason}")


class AgentLoadError(ConfigError):
    """Raised when an agent path (``file.py:func`` or ``pkg.mod:func``) cannot be loaded.

    Raised by an instance (a child process of the process executor could not import the
    agent's module), it fails the task at once: the code does not import there, and no
    retry changes that."""


class AgentChanged(AgentLoadError):
    """Raised by an instance whose process (a child of the process executor) finds the
    agent's file changed since its worker loaded it: new code written over it under a
    running worker. ``fatal``: the worker stops (a worker started again runs the new code),
    and the task goes back to the queue, no attempt spent (``unspent``)."""

    fatal: ClassVar[bool] = True
    unspent: ClassVar[bool] = True


def is_unspent(exc: BaseException) -> bool:
    """Whether the attempt ``exc`` ended goes back to the queue without spending one of
    the task's attempts: the task is not at fault (its agent's file changed under the
    worker, its executor died: `legion.executors.errors.ExecutorLost`)."""
    return getattr(exc, "unspent", False) is True


class StoreError(LegionError):
    """Raised when the store fails or returns something it should not.

    ``retryable`` says whether the same call may succeed later unchanged (the store
    comes back, frees space): workers keep their work and try again; the HTTP API
    answers 503 (or 507) instead of 500.
    """

    retryable: ClassVar[bool] = False


class StoreUnavailable(StoreError):
    """Raised when the store cannot be reached, is busy or locked, or does not answer
    within its timeout. Retry later; the HTTP API answers 503 with ``Retry-After``."""

    retryable = True


class StoreGone(StoreError):
    """The store's file was deleted or replaced while this process used it: what it
    writes goes to a file no other process can open, and a later command with the same
    URL starts afresh and runs every task again. A worker that meets it stops."""


class StorageFull(StoreError):
    """Raised when the store has no room left (disk full, size limit reached). Retry once
    space is freed; the HTTP API answers 507."""

    retryable = True


class LeaseLost(LegionError):
    """Raised inside an agent instance whose lease no longer holds: the store refused its
    writes (a step, a memory write) because the task was taken back, leased to another
    worker or finished meanwhile. The worker stops the instance; nothing it writes after
    that is accepted."""

    def __init__(self, task_id: int, attempt: int) -> None:
        self.task_id = task_id
        self.attempt = attempt
        super().__init__(f"the lease on task {task_id} (attempt {attempt}) was lost")


class IdempotencyConflict(LegionError):
    """Raised when a submission sends an idempotency key again with another agent or input:
    answering it with the first task would lose the new submission. Nothing of that
    submission is stored. ``keys``: the conflicting keys, as sent."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        shown = ", ".join(repr(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
        super().__init__(
            f"idempotency key {shown} was sent before with another agent or input (in an "
            "earlier submission, or earlier in the same batch): use a new key for a new task"
        )


class StillStopping(LegionError):
    """A retry with children while some of the task's descendants are still stopping (a
    cancel asked, not yet taken by their worker): retried now, the parents would rerun and
    find those children ended cancelled, and fail again. Nothing was queued; retry once
    they have ended (their worker's next heartbeat, a few seconds). ``ids``: them."""

    def __init__(self, task_id: int, ids: list[int]) -> None:
        self.ids = ids
        shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
        super().__init__(
            f"task {task_id} has descendants still stopping ({shown}: their cancel asked, "
            "not yet taken by their worker): retry it with its children once they have "
            "ended, within a few seconds; nothing was queued"
        )


class NotAwaited(LegionError):
    """A signal sent for one wait of a task (``waiting=N``: its wait for the N-th signal of
    that event) while the task does not wait for it: that wait ended (a second click of
    an approval button), or has not begun. Nothing was kept. ``status``: the task's."""

    def __init__(self, message: str, status: Any) -> None:
        super().__init__(message)
        self.status = status


class TaskFailed(LegionError):
    """Raised when a caller asks for the output of a task that did not succeed."""

    def __init__(self, task_id: int, status: str, error: dict[str, Any] | None) -> None:
        self.task_id = task_id
        self.status = status
        self.error = error or {}
        detail = f"{self.error.get('type', '?')}: {self.error.get('message', '')}" if error else ""
        super().__init__(f"task {task_id} is {status}" + (f" ({detail})" if detail else ""))


class WorkerStopped(LegionError):
    """Raised by `legion.Runtime.map` and ``results`` when the local worker that ran the
    tasks stopped on an error (an error every task would meet, such as a rejected API key,
    or a crash of the worker's own): their results would never come. Its ``__cause__`` is
    that error."""


class MemoryExceeded(LegionError):
    """The worker's memory stayed past its ``max_memory_mb`` with nothing left running:
    what holds it (a leak in an agent, a cache it fills) outlives the tasks, and only a
    new process frees it. The worker stops; ``legion worker`` exits with 8, and its
    supervisor starts a fresh one."""


class AgentError(LegionError):
    """Base of the errors that end an agent instance; ``retryable`` decides what follows."""

    retryable: bool = True


class Permanent(AgentError):
    """Raise inside an agent to fail its task at once: no retry will help."""

    retryable = False


class WaitTimeout(Permanent, TimeoutError):
    """Raised inside an agent when ``ctx.wait_for`` (or ``ctx.approval``) got no signal
    within its timeout; catch it to go on without one."""


class WaitError(Permanent, ValueError):
    """A durable wait called in a way no retry can mend: an event name that is empty or
    too long, a timeout or a sleep that is not a number of seconds, two waits for one
    event at once (``ctx.gather``), which would receive one signal twice."""


class StepNameError(Permanent, ValueError):
    """A step given a name no record can be kept under: not text (or text with a lone
    surrogate), a name ending as a gather's branches are keyed (``@1``), or one that is the
    key of another step (``fetch#2`` beside a second ``fetch``). A mistake of the code,
    which no retry mends. (A name with a NUL, or too long to index, is an `OutputError`, as
    every value no store can hold.)"""


class StepFunctionError(Permanent, TypeError):
    """A step given something to run that is not a function: a coroutine
    (``ctx.step("fetch", fetch(url))`` called the function already: pass it and its
    arguments, ``ctx.step("fetch", fetch, url)``) or any other value. A mistake of the code,
    which no retry mends."""


class MessagesError(Permanent, TypeError):
    """``ctx.llm.chat`` given messages that are not a list of message objects: a string
    (``ctx.llm.chat("hi")``: write ``[{"role": "user", "content": "hi"}]``) or anything
    else. A mistake of the code, which no retry mends."""


class ChildFailed(Permanent):
    """Raised inside an agent when a child task of ``ctx.spawn`` or ``ctx.map`` did not
    succeed (``failed`` lists the child task ids with their status). ``outputs``: the
    children's outputs in the order of their inputs, ``None`` for those that did not
    succeed (what the others of a ``ctx.map`` gave: raised once every child has ended)."""

    def __init__(
        self, message: str, failed: dict[int, str], outputs: list[Any] | None = None
    ) -> None:
        super().__init__(message)
        self.failed = failed
        self.outputs = outputs if outputs is not None else []


class ReplayMismatch(Permanent):
    """Raised inside an agent when a replay asks ``ctx.spawn`` or ``ctx.map`` for another
    agent or input than the child task its first run started at that place: the agent's
    code changed while the task was in flight (a call added before it, inputs reordered,
    another agent), or computed the input from something a replay does not see again (the
    time, a random number, a memory read). Handing it that child's output would be a
    wrong answer, so the task fails; retry it once the code asks what it asked before."""


class InputError(Permanent):
    """Raised when a task's input does not fit the agent's parameters or input schema.

    ``fields``: when the input names fields the agent does not take, or lacks some it
    needs, each as ``(kind, field, message)``, ``kind`` being ``extra_forbidden`` or
    ``missing`` (as pydantic names them); the HTTP API answers them field by field."""

    def __init__(self, message: str, *, fields: tuple[tuple[str, str, str], ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class OutputError(Permanent):
    """Raised when an agent's result (or a step's) cannot be stored as JSON."""


class MemoryConflict(AgentError):
    """Raised by ``ctx.memory.update`` when other writers of its key changed it under
    every one of its tries: retried like any failure of the agent."""


class UnawaitedWork(Permanent):
    """Raised (in strict mode) when an agent made a step or call and never awaited it."""


class LoopStopRefused(Permanent):
    """Raised in an agent that stops the event loop (``loop.stop()``, itself or through a
    library): that loop runs every instance of its worker, so the agent's attempt fails
    instead, and the loop goes on."""


class VectorError(Permanent):
    """Raised on a vector collection misuse (wrong dimension, empty text, no such
    collection) or a store that cannot hold vectors; nothing was written."""


class MissingExtra(ConfigError, Permanent):
    """Raised where an agent uses a part of legion whose optional packages are not
    installed (``ctx.llm.openai()`` without the openai SDK). Not retried, and it stops the
    run: every other task would fail the same way."""

    fatal: ClassVar[bool] = True


class ProviderRejected(Permanent):
    """Raised when an LLM provider refuses a request (400, 404, 422...): retrying the same
    request cannot help. The message says what the provider said."""

    fatal: ClassVar[bool] = False
    """Whether every other call would fail the same way: then the runtime stops the run."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.code = code
        """The provider's own name for the error (OpenAI's ``error.code``:
        ``context_length_exceeded``...), if it gave one."""
        self.param = param
        """The request's field the provider blamed (``error.param``), if it named one."""

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"provider": self.provider, "status": self.status}
        if self.code is not None or self.param is not None:
            fields.update(code=self.code, param=self.param)
        return (_rebuild, (type(self), str(self), fields))


class ProviderAuthError(ProviderRejected):
    """Raised when an LLM provider rejects the credentials (401, 403)."""

    fatal: ClassVar[bool] = True
    """Stop the whole run: every other task would fail the same way."""


class EndpointNotFound(ProviderRejected):
    """Raised when a provider's server answers 404 or 405 with a page of its own, not an
    API error: nothing serves the URL the route's base URL makes (a path joined
    twice, a /v1 missing). Every call would fail the same way."""

    fatal: ClassVar[bool] = True
    """Stop the whole run."""


class EmptyCompletion(ProviderRejected):
    """Raised when a model ends its turn without writing any text (no tool call either):
    an empty string is not an answer. Not retried: a greedy model answers the same prompt
    the same way; change the prompt, or sample (``temperature``)."""


class ResponseTooLarge(ProviderRejected):
    """Raised when a provider's answer (or one event of its stream) passes the route's size
    limit. Permanent: the same request would bring the same answer back, paid again."""


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
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        self.code = code
        """The provider's own name for the error (``error.code``), if it gave one."""
        self.param = param
        """The request's field the provider blamed (``error.param``), if it named one."""

    def __reduce__(self) -> tuple[Any, ...]:
        fields: dict[str, Any] = {
            "provider": self.provider,
            "status": self.status,
            "retry_after": self.retry_after,
        }
        if self.code is not None or self.param is not None:
            fields.update(code=self.code, param=self.param)
        # (``retryable`` set on this error, as the LLM client does, crosses with it)
        state = {k: v for k, v in vars(self).items() if k == "retryable"}
        return (_rebuild, (type(self), str(self), fields), state)


class RateLimited(ProviderError):
    """Raised when a provider answers 429: over its rate limit."""


class RetryAfterTooLong(RateLimited):
    """Raised when a provider answers 429 (or the route is paused by an earlier 429) with a
    Retry-After longer than the attempt has left. Waiting would only end in a `TaskTimeout`
    that says nothing of the 429, so the attempt ends now and the task goes back to the queue
    until ``retry_after`` seconds have passed, without spending one of its attempts."""


class ProviderUnavailable(ProviderError):
    """Raised on a 5xx answer, a timeout, a broken connection or a stream gone idle."""


class ConnectionRefused(ProviderUnavailable):
    """Raised when a provider's host refuses the connection: nothing listens at the
    route's address (a server not started yet, or a wrong port)."""


class HostNotFound(ConnectionRefused):
    """Raised when a provider's host name does not resolve (a mistyped host, no DNS):
    nothing can answer at the route's address, as when its connections are refused."""


class NothingListens(ProviderRejected):
    """Raised, where a run asks for it (``legion run``), when a route that never answered
    has had its connections refused for a while: nothing listens at its address, and
    every other task would wait and fail the same way. ``fatal``: the run stops, its
    tasks queued unspent for the same command once the server runs (a fleet's workers
    wait for it instead: their provider may start after them)."""

    fatal: ClassVar[bool] = True


class MalformedResponse(ProviderError):
    """Raised when a provider's answer cannot be parsed (invalid JSON, missing fields)."""


class BudgetExceeded(AgentError):
    """Raised by an LLM call that a budget cannot hold: the run's (``--max-cost``,
    ``--max-tokens``, ``--max-calls``), its agent's (``@legion.agent(max_cost=...)``) or
    its tenant's (``legion serve --tenant-max-cost``). Nothing was sent. The task goes back
    to the queue with what it recorded, without spending an attempt; a run with a higher
    budget resumes it. ``scope``: ``"run"``, ``"agent"`` or ``"tenant"``."""

    def __init__(self, message: str, scope: str = "run") -> None:
        super().__init__(message)
        self.scope = scope

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.scope))


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
    """Whether a task that ended with ``exc`` should be tried again: an SDK's error for a
    call legion made (``ctx.llm.openai()``) as legion's error for it would be."""
    if isinstance(exc, AgentError):
        return exc.retryable
    verdict = sdk_verdict(exc)
    if verdict is not None:
        return verdict[0]
    from pydantic import ValidationError  # here: `import legion` starts without pydantic

    # A validation error means bad data, which retrying cannot fix.
    return not isinstance(exc, ValidationError)


RETRYABLE_HEADER = "x-legion-retryable"
FATAL_HEADER = "x-legion-fatal"
"""Headers of the HTTP error legion's SDK transport answers for a call it could not make
(`legion.llm.sdk.transport`): whether legion's own error for the call was retryable, and
whether it stops the run (a rejected API key)."""


LEGION_ERROR = "legion_error"
"""The key, in the ``extensions`` of the HTTP error legion's SDK transport answers, of
legion's own error for the call (`legion_cause`)."""


def _sdk_responses(exc: BaseException) -> Iterator[Any]:
    """The HTTP responses of ``exc`` and of its causes (an ``openai.APIStatusError``
    carries one; a framework's error may be raised from it), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if response is not None:
            yield response
        current = current.__cause__ or current.__context__


def sdk_verdict(exc: BaseException) -> tuple[bool, bool] | None:
    """``(retryable, fatal)`` that legion's SDK transport put on the HTTP response an SDK
    raised ``exc`` for (an ``openai.APIStatusError``, or a framework's error raised from
    one: the chain of causes is followed), or ``None`` for any other error."""
    for response in _sdk_responses(exc):
        headers = getattr(response, "headers", None)
        value = _header(headers, RETRYABLE_HEADER)
        if value is not None:
            return value == "true", _header(headers, FATAL_HEADER) == "true"
    return None


def legion_cause(exc: BaseException) -> LegionError | None:
    """legion's own error for the call that an SDK raised ``exc`` for (through
    ``ctx.llm.openai()``: the HTTP error legion's transport answered carries it), or
    ``None``: what the task's end should be decided by where the SDK's error says too
    little (a budget's stop is a 429 to the SDK, yet costs the task no attempt)."""
    for response in _sdk_responses(exc):
        extensions = getattr(response, "extensions", None)
        cause = extensions.get(LEGION_ERROR) if isinstance(extensions, dict) else None
        if isinstance(cause, LegionError):
            return cause
    return None


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` stops the whole run, every other task meeting it too (a rejected
    API key): legion's own error, or an SDK's for a call legion made."""
    if getattr(exc, "fatal", False):
        return True
    verdict = sdk_verdict(exc)
    return verdict is not None and verdict[1]


def _header(headers: Any, name: str) -> str | None:
    try:
        value = headers.get(name) if headers is not None else None
    except Exception:  # (not a mapping of headers after all)
        return None
    return value if isinstance(value, str) else None
