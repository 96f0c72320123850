"""What a worker and an agent instance running elsewhere say to each other.

The worker keeps the lease, the journal and the real `legion.context.Context`;
the remote side runs the agent's code with a stand-in context that sends what it cannot
do itself to the worker. Whatever carries them (a pipe to a child process, a Ray actor),
the messages are the same:

- an `Invocation` starts an instance; an `Outcome` ends it;
- the remote side *calls* the worker (and waits for the answer) or *notifies* it:

  ================  =====================  =====================================
  op                arguments              answer
  ================  =====================  =====================================
  ``step_start``    key                    (notification) a step began running
  ``step_end``      key, JSON bytes        ``None`` once the result is recorded
  ``step_abort``    key                    (notification) it failed: record nothing
  ``memory_get``    key                    ``(found, value)``
  ``memory_set``    key, JSON bytes        ``None`` once durable
  ``memory_delete`` key                    ``None`` once durable
  ``memory_items``                         ``{key: value}``
  ``memory_read_raw`` key                  the stored JSON bytes, or ``None``
  ``memory_swap``   key, expected JSON     whether it was written (an update's
                    (or ``None``), JSON    compare-and-set)
  ``llm_chat``      messages, model,       the recorded response
                    timeout, stream,       (``ChatResponse.to_json()``)
                    params
  ``llm_embed``     texts, model, params   the recorded embeddings
                                           (``Embeddings.to_json()``)
  ``vectors``       collection, scope,     the result of ``ctx.vectors(...).<op>``:
                    model, op, args        ids, hits as JSON, a count
  ``log``           level, message         (notification)
  ================  =====================  =====================================

A failed call answers an `ErrorEnvelope`. Errors travel as envelopes because an
exception pickled in one process does not always unpickle in another: the envelope
keeps the type, message, traceback and retryability either way.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from legion import codec
from legion.errors import AgentCrash, is_retryable
from legion.executors.errors import MemoryLimitExceeded, remote_error
from legion.task import exception_message
from legion.waiting.suspend import Suspended

STEP_START: Final = "step_start"
STEP_END: Final = "step_end"
STEP_ABORT: Final = "step_abort"
MEMORY_GET: Final = "memory_get"
MEMORY_SET: Final = "memory_set"
MEMORY_DELETE: Final = "memory_delete"
MEMORY_ITEMS: Final = "memory_items"
MEMORY_READ_RAW: Final = "memory_read_raw"  # an update's read, its stored JSON
MEMORY_SWAP: Final = "memory_swap"  # an update's compare-and-set
LLM_CHAT: Final = "llm_chat"
LLM_EMBED: Final = "llm_embed"
VECTORS: Final = "vectors"
WAIT: Final = "wait"  # a durable wait (ctx.wait_for, sleep, approval, spawn, map)
LOG: Final = "log"
STARTED: Final = "started"  # the instance began to run remotely (its scheduling is over)
# Asked by an instance before it ends, after notifications (its logs): answered once
# those are served, where they may reach the worker after the instance's end (Ray's).
SETTLE: Final = "settle"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One attempt of one task, as the remote side needs it."""

    ref: str  # the agent's function, as Agent.ref names it
    # The validated arguments, pickled (models stay models), unpickled remotely once the
    # agent's module is imported there.
    kwargs: bytes
    agent: str
    task_id: int
    attempt: int
    key: str | None
    session: str
    # Steps recorded by earlier attempts (key -> stored JSON): replayed remotely.
    steps: Mapping[str, bytes] = field(default_factory=dict)
    # The worker's level for the agent's logger: records below it are not sent.
    log_level: int = 0
    # The worker's import path, so the agent's module imports the same way remotely.
    sys_path: tuple[str, ...] = ()
    # The agent's module file and its SHA-256 as its worker loaded it, where the remote
    # side reads the same file (`legion.executors.remote.file_digest`): a process that
    # finds it changed refuses to import it.
    source: tuple[str, bytes] | None = None


@dataclass(frozen=True, slots=True)
class ErrorEnvelope:
    """An error on its way between processes."""

    module: str  # the error's class, where it was raised
    qualname: str
    message: str
    traceback: str  # formatted where it was raised
    retryable: bool
    fatal: bool
    pickled: bytes | None  # the exception itself, when it pickles


Outcome = tuple[bool, Any]
"""How an instance ended: ``(True, result as JSON bytes)`` or ``(False, ErrorEnvelope)``."""


class RemoteTraceback(Exception):
    """The traceback of an error raised in another process, attached as the ``__cause__``
    of its copy here so that the task's error record shows where it really happened."""

    carries_traceback = True
    """Not a cause of its own: an error's message does not quote it (`legion.task`)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def pack_error(exc: BaseException) -> ErrorEnvelope:
    """Wrap ``exc`` for the trip to another process."""
    if isinstance(exc, AgentCrash):  # send what the agent raised; the receiver wraps it again
        exc = exc.original
    cls = type(exc)
    try:
        pickled: bytes | None = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pickled = None
    return ErrorEnvelope(
        module=cls.__module__,
        qualname=cls.__qualname__,
        message=exception_message(exc),
        traceback="".join(traceback.format_exception(exc)),
        retryable=is_retryable(exc),
        fatal=bool(getattr(exc, "fatal", False)),
        pickled=pickled,
    )


def unpack_error(envelope: ErrorEnvelope) -> BaseException:
    """The error an envelope carries: the original class when it can be rebuilt here,
    else a `legion.executors.errors.RemoteError` named after it. Either way its
    ``__cause__`` is the original traceback."""
    exc: BaseException | None = None
    if envelope.pickled is not None:
        try:
            loaded = loads(envelope.pickled)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exc = loaded
    if exc is None:
        exc = remote_error(
            envelope.module,
            envelope.qualname,
            envelope.message,
            retryable=envelope.retryable,
            fatal=envelope.fatal,
        )
    exc.__cause__ = RemoteTraceback(envelope.traceback)
    return exc


def outcome_value(outcome: Outcome, *, memory_limit_mb: int | None = None) -> Any:
    """The result an outcome carries, or raise the error it carries.

    A ``BaseException`` that is not an ``Exception`` (``SystemExit``) is raised as
    `legion.errors.AgentCrash`, as the runner does for local agents. With a
    memory limit, a ``MemoryError`` means the instance hit it.
    """
    ok, payload = outcome
    if ok:
        return codec.loads(payload)
    if memory_limit_mb is not None and (payload.module, payload.qualname) == (
        "builtins",
        "MemoryError",
    ):
        raise MemoryLimitExceeded(memory_message(memory_limit_mb)) from RemoteTraceback(
            payload.traceback
        )
    error = unpack_error(payload)
    if isinstance(error, Suspended):  # the instance suspended at a wait: not a crash
        raise error
    if not isinstance(error, Exception):
        raise AgentCrash(error) from error.__cause__
    raise error


def memory_message(limit_mb: int | None) -> str:
    if limit_mb is None:
        return "the agent's process ran out of memory"
    return f"the agent's process exceeded its memory limit of {limit_mb} MB"


class _LoadedOnly(pickle.Unpickler):
    """Unpickles only classes of modules already imported: reading a message never
    imports (runs) a module that this process did not load itself."""

    def find_class(self, module: str, name: str) -> Any:
        if module not in sys.modules:
            raise pickle.UnpicklingError(f"{module}.{name} is not loaded in this process")
        return super().find_class(module, name)


def loads(data: bytes) -> Any:
    """Unpickle a message from the other side (see `_LoadedOnly`)."""
    return _LoadedOnly(io.BytesIO(data)).load()


def dumps(message: Any) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
