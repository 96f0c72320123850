"""Task values shared by every layer: statuses, what is submitted, leased and completed.

These are plain frozen dataclasses; JSON payloads (inputs, outputs, step results) travel
between the store and the runner as encoded ``bytes`` so they are decoded once, where
they are used.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from legion import codec
from legion.diagnostics.report import Diagnostic
from legion.errors import AgentCrash, LegionError
from legion.record import record


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for a worker (possibly until its not-before time)
    RUNNING = "running"  # leased by a worker; the lease expires unless heartbeated
    SUCCEEDED = "succeeded"  # finished with an output
    FAILED = "failed"  # finished with an error that retrying cannot fix
    DEAD = "dead"  # every attempt failed; kept with its last error, can be re-queued
    CANCELLED = "cancelled"  # cancelled by a user before it finished
    WAITING = "waiting"  # suspended: holds no lease nor slot until a signal, timer or children

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED}
)
TERMINAL_STATUSES: frozenset[str] = frozenset(s.value for s in _TERMINAL)


@record
class ErrorInfo:
    """Why an attempt failed: exception type, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        shown = exc.original if isinstance(exc, AgentCrash) else exc
        tb = codec.storable_text("".join(traceback.format_exception(shown)))
        message = _with_cause(shown, exception_message(shown))
        return cls(
            type=type(shown).__name__,
            message=capped(message, MAX_MESSAGE),
            traceback=capped(tb, MAX_TRACEBACK),
        )

    def to_json(self) -> bytes:
        return codec.dumps(
            {"type": self.type, "message": self.message, "traceback": self.traceback}
        )

    @classmethod
    def from_json(cls, data: bytes | str | None) -> ErrorInfo | None:
        if not data:
            return None
        d = codec.loads(data)
        return cls(
            type=d.get("type", ""), message=d.get("message", ""), traceback=d.get("traceback", "")
        )

    def brief(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


MAX_MESSAGE = 16_384
"""The most characters of an error's message kept (its start and its end): a message of
50 MB was stored whole, twice with its traceback, for every attempt (a store of 300-470
MB from one task), and written whole into the run's output line."""
MAX_TRACEBACK = 65_536
"""The most characters of an error's traceback kept (its start and its end, where the
line that raised is)."""


def capped(text: str, limit: int) -> str:
    """``text``, or its start and end around a note of how much was left out."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}\n... [{len(text) - 2 * keep:,} characters left out] ...\n{text[-keep:]}"


MAX_CAUSE = 500
"""Characters of an error's cause kept in its message (its traceback has it whole)."""


def _with_cause(exc: BaseException, message: str) -> str:
    """``message``, with what caused ``exc`` when it was raised from another error that it
    does not quote: a framework's "Exceeded maximum output retries (1)" hid the
    validation error that said why. legion's own errors say what they need."""
    cause = exc.__cause__
    if cause is None or isinstance(exc, LegionError) or getattr(cause, "carries_traceback", False):
        return message  # (a traceback from another process is no cause of its own)
    said = exception_message(cause)
    if said and said in message:
        return message
    said = said if len(said) <= MAX_CAUSE else said[:MAX_CAUSE] + "..."
    return f"{message} (from {type(cause).__name__}{': ' + said if said else ''})"


def exception_message(exc: BaseException) -> str:
    """``str(exc)`` as JSON can hold it; the exception's type where its ``__str__``
    itself fails (the attempt still ends, failed, with what can be said of it)."""
    try:
        return codec.storable_text(str(exc))
    except Exception as failed:
        return f"<{type(exc).__name__}.__str__ failed: {type(failed).__name__}>"


NO_STEPS: Mapping[str, bytes] = MappingProxyType({})
"""The recorded steps of a task that has none (most leases): one read-only mapping for
all, not an empty dict each."""


@record
class NewTask:
    """A task to submit. ``input`` is the JSON object of the agent's keyword arguments."""

    agent: str
    input: bytes
    key: str | None = None
    session: str | None = None
    priority: int = 0
    max_attempts: int = 4
    not_before: float = 0.0
    tenant: str = "default"  # whose task it is; idempotency keys are unique per tenant
    needs: str | None = None  # what an instance needs, as JSON (legion.resources)


@record
class Submitted:
    """The answer to a submission: the task's id and whether this call created it."""

    id: int
    key: str | None
    status: TaskStatus
    created: bool


@record
class Lease:
    """A task leased to one worker for one attempt; ``attempt`` is the fencing token."""

    id: int
    agent: str
    input: bytes
    key: str | None
    session: str | None
    attempt: int
    max_attempts: int
    # Steps recorded by earlier leases of the task (any attempt number: a released task
    # keeps its steps), by step key, as stored JSON.
    steps: Mapping[str, bytes]
    priority: int = 0  # higher first: also orders the task's LLM calls at a route
    tenant: str = "default"  # whose task it is: a route shares its capacity fairly by tenant


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"  # output recorded
    RETRY = "retry"  # back to queued with a not-before time; error kept
    FAILED = "failed"  # permanent failure
    DEAD = "dead"  # retries exhausted
    CANCELLED = "cancelled"  # cancelled by request
    RELEASED = "released"  # given back unfinished (worker draining); attempt not counted
    WAITING = "waiting"  # suspended at a wait (see legion.waiting); attempt not counted

    @property
    def status(self) -> TaskStatus:
        """The status a completion with this outcome leaves its task in."""
        return _OUTCOME_STATUS[self]


@dataclass(frozen=True, slots=True)
class Wait:
    """What a suspended task waits for; it is queued again as soon as one holds: the
    ``count``-th signal named ``event`` arrived, at most ``children`` of its child tasks are
    unfinished, or ``wake_at`` passed (``None``: not that)."""

    event: str | None = None
    count: int = 0
    children: int | None = None
    wake_at: float | None = None
    info: bytes | None = None  # JSON shown while it waits (an approval's prompt)


_OUTCOME_STATUS = {
    Outcome.SUCCEEDED: TaskStatus.SUCCEEDED,
    Outcome.RETRY: TaskStatus.QUEUED,
    Outcome.FAILED: TaskStatus.FAILED,
    Outcome.DEAD: TaskStatus.DEAD,
    Outcome.CANCELLED: TaskStatus.CANCELLED,
    Outcome.RELEASED: TaskStatus.QUEUED,
    Outcome.WAITING: TaskStatus.WAITING,
}


class TaskUsage:
    """What a task's LLM calls used, replayed calls included (they were paid for once).

    ``cost_usd`` is the cost of the calls on a priced model; calls on a model without a
    price are counted in ``unpriced_calls``, and the JSON then says ``"cost_known":
    false``. The cached, cache-write and reasoning token counts are parts of the prompt
    and completion counts, written when not zero."""

    __slots__ = (
        "cache_write_tokens",
        "cached_tokens",
        "completion_tokens",
        "cost_usd",
        "llm_calls",
        "prompt_tokens",
        "reasoning_tokens",
        "unpriced_calls",
    )

    _DETAILS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
        self.cost_usd = 0.0
        self.unpriced_calls = 0
        self.llm_calls = 0

    @classmethod
    def of(cls, usage: TaskUsage | None) -> TaskUsage:
        """A copy of ``usage`` (a new, empty one for ``None``)."""
        copy = cls()
        if usage is not None:
            for name in cls.__slots__:
                setattr(copy, name, getattr(usage, name))
        return copy

    def add(self, call: Mapping[str, Any]) -> None:
        """Count one recorded LLM call (a ``ChatResponse.to_json()`` with ``cost_usd``,
        ``None`` when the model has no price)."""
        usage = call.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens", 0))
        self.completion_tokens += int(usage.get("completion_tokens", 0))
        self.cached_tokens += int(usage.get("cached_tokens") or 0)
        self.cache_write_tokens += int(usage.get("cache_write_tokens") or 0)
        self.reasoning_tokens += int(usage.get("reasoning_tokens") or 0)
        cost = call.get("cost_usd", 0.0)
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd += float(cost)
        self.llm_calls += 1

    def to_json(self) -> bytes | None:
        if not self.llm_calls:
            return None
        data: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "llm_calls": self.llm_calls,
        }
        for name in self._DETAILS:
            if getattr(self, name):
                data[name] = getattr(self, name)
        if self.unpriced_calls:
            data["cost_known"] = False
            data["unpriced_calls"] = self.unpriced_calls
        return codec.dumps(data)


def paid_call(key: str, value: Any) -> Mapping[str, Any] | None:
    """What the recorded step ``key`` paid for, if it made a call: an LLM call's answer,
    or the embedding of a vector write or search, as `TaskUsage.add` counts it."""
    if key.startswith("llm."):
        paid = value
    elif key.startswith("vectors."):
        paid = value.get("embedding") if isinstance(value, dict) else None
    else:
        return None
    return paid if isinstance(paid, dict) and isinstance(paid.get("usage"), dict) else None


@record
class Completion:
    """The end of one attempt, written only while ``owner`` still holds lease ``attempt``."""

    id: int
    attempt: int
    owner: str
    outcome: Outcome
    output: bytes | None = None
    error: ErrorInfo | None = None
    not_before: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    usage: bytes | None = None  # TaskUsage JSON, when the attempt made LLM calls
    diagnostics: tuple[Diagnostic, ...] = ()  # what legion noticed about the attempt
    wait: Wait | None = None  # with Outcome.WAITING: what the task waits for
    running: float = 0.0  # seconds of the attempt spent running (see legion.attempt)
    waited: float = 0.0  # seconds of the attempt spent waiting for capacity
    # Whose task it is and the agent it runs (from its lease; None: not told, the store
    # reads them from the task).
    tenant: str | None = None
    agent: str | None = None


@record
class StepRecord:
    """A step's result, recorded once per task and step key."""

    task_id: int
    key: str
    attempt: int
    output: bytes
    started_at: float
    finished_at: float
    # The lease it comes from: a step is recorded only while ``owner`` holds lease
    # number ``attempt`` of the task (see Store.write).
    owner: str | None = None


@record
class TaskInfo:
    """A task as the store holds it."""

    id: int
    agent: str
    key: str | None
    session: str | None
    status: TaskStatus
    attempt: int
    max_attempts: int
    input: Any
    output: Any
    error: ErrorInfo | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    lease_owner: str | None = None
    usage: dict[str, Any] | None = None
    tenant: str = "default"  # whose task it is (see legion.store.tenancy)
    parent_id: int | None = None  # the task that started it (ctx.spawn, ctx.map)
    cancel_requested: bool = False  # a cancel was asked: a running task stops at its next check

    @property
    def latency(self) -> float | None:
        """Seconds from the start of the last attempt to its end."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@record
class TaskResult:
    """How a task ended (or where it stands): what ``Runtime.map`` and ``result`` give."""

    id: int
    key: str | None
    status: TaskStatus
    output: Any = None
    error: ErrorInfo | None = None
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    usage: dict[str, Any] | None = None
    diagnostics: tuple[Diagnostic, ...] = ()
    """The async pitfalls found in its last attempt, when that attempt ended on this
    process's worker and the result was delivered then; a result read back from the
    store (a task that ended earlier or in another process) carries none: the store
    keeps them (``legion status --advice``, ``store.diagnostics(task_id=...)``)."""

    @property
    def ok(self) -> bool:
        return self.status is TaskStatus.SUCCEEDED

    @property
    def latency(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @classmethod
    def from_info(cls, info: TaskInfo) -> TaskResult:
        return cls(
            id=info.id,
            key=info.key,
            status=info.status,
            output=info.output,
            error=info.error,
            attempt=info.attempt,
            started_at=info.started_at,
            finished_at=info.finished_at,
            usage=info.usage,
        )
