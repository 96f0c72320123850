"""Errors of the executors that run agent instances elsewhere.

They sit in legion's one tree, under `legion.errors.AgentError`::

    AgentError
    ├── InstanceLost           the process, Ray worker or node running an instance died
    │   ├── ExecutorLost            ... because the executor itself died (Ray on this node)
    │   ├── MemoryLimitExceeded     ... because it went past the executor's memory limit
    │   └── ProtocolError           ... or can no longer be trusted: it sent nonsense
    └── RemoteError            an agent's error whose class cannot be rebuilt here

All are retried by the agent's policy: a lost instance is the place's failure, not the
task's, and a `RemoteError` keeps the retryability of the error it stands for. An
`ExecutorLost` stops the worker and gives the task back, no attempt spent.
"""

from __future__ import annotations

from typing import Any, ClassVar

from legion.errors import AgentError


class InstanceLost(AgentError):
    """Raised when the process or node running an instance died before it answered
    (a crash in native code, a signal, ``os._exit``, a lost Ray node). Retried."""


class ExecutorLost(InstanceLost):
    """Raised when what runs the instances is itself gone (the Ray instance's local raylet
    died): every other instance would meet it too. ``fatal``: the worker stops, and the
    task goes back to the queue with no attempt spent; a worker started again starts
    the executor again."""

    fatal: ClassVar[bool] = True
    unspent: ClassVar[bool] = True


class MemoryLimitExceeded(InstanceLost):
    """Raised when an instance's process went past the executor's memory limit."""


class ProtocolError(InstanceLost):
    """Raised when the remote side of an instance sends what its worker does not
    understand; the process it ran in is not used again."""


class RemoteError(AgentError):
    """Stands for an error raised by agent code in another process whose class could not
    be rebuilt here (it cannot be pickled, or is not imported in this process).

    Instances are made of a subclass named after the original class, so the task's error
    record shows the original type; ``retryable`` and ``fatal`` are the original's.
    """

    def __init__(self, message: str, *, retryable: bool, fatal: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.fatal = fatal

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                type(self).__module__,
                type(self).__qualname__,
                self.args[0],
                self.retryable,
                self.fatal,
            ),
        )


_STAND_INS: dict[tuple[str, str], type[RemoteError]] = {}


def remote_error(
    module: str, qualname: str, message: str, *, retryable: bool, fatal: bool
) -> RemoteError:
    """A `RemoteError` whose class is named ``qualname`` (one class per name)."""
    cls = _STAND_INS.get((module, qualname))
    if cls is None:
        name = qualname.rpartition(".")[2]
        cls = type(name, (RemoteError,), {"__module__": module, "__qualname__": qualname})
        _STAND_INS[module, qualname] = cls
    return cls(message, retryable=retryable, fatal=fatal)


def _rebuild(module: str, qualname: str, message: str, retryable: bool, fatal: bool) -> RemoteError:
    return remote_error(module, qualname, message, retryable=retryable, fatal=fatal)
