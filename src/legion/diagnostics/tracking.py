"""Which agent instance owns which asyncio task, and what escaped from the tasks it spawned.

The runner sets `CURRENT` in each instance's task; asyncio copies the context into
every task created from there, so a task factory installed on the loop learns, for each
new task, which instance spawned it (``ctx.gather`` children, or the agent's own
``asyncio.create_task``). With that:

- the loop watchdog can say which agent blocked the loop even when the blocking code
  runs in a child task;
- an exception from a task the agent spawned and never awaited is attached to the
  owning task (when the instance ends, or when asyncio reports it as "never retrieved")
  instead of being lost in a log line or crashing the worker;
- ``loop.stop()`` called from an instance's task raises `LoopStopRefused` there instead
  of stopping the loop every other instance (and the worker) runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import sys
import warnings
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from types import FrameType
from typing import Any, Protocol

from legion.errors import LoopStopRefused

log = logging.getLogger("legion.diagnostics")


class Owner(Protocol):
    """What an agent instance offers to the tracking (the runner's ``Instance``)."""

    def spawned(self, task: asyncio.Task[Any]) -> None: ...

    def escaped(self, task: asyncio.Task[Any], exc: BaseException) -> None: ...

    def never_awaited(self, coroutine: Coroutine[Any, Any, Any], frame: FrameType) -> None: ...


CURRENT: contextvars.ContextVar[Owner | None] = contextvars.ContextVar(
    "legion_instance", default=None
)
_OWNERS: weakref.WeakKeyDictionary[asyncio.Future[Any], Owner] = weakref.WeakKeyDictionary()
_INSTALLED: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_SAVED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
    weakref.WeakKeyDictionary()
)
_USERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()

TaskFactory = Callable[..., "asyncio.Task[Any]"]


def _close_type() -> type:
    async def gen() -> AsyncGenerator[None, None]:
        yield

    closing = gen().aclose()
    closing.close()
    return type(closing)


_ASYNCGEN_CLOSE = _close_type()
"""What asyncio's task closing an async generator that was left unfinished runs (the
loop's finalizer hook makes it, in the context where the generator was let go): asyncio's
task, not one the agent made and could await."""


async def _awaiting(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def owner_of(task: asyncio.Future[Any] | None) -> Owner | None:
    return _OWNERS.get(task) if task is not None else None


def claim(task: asyncio.Task[Any], owner: Owner) -> None:
    """Record ``owner`` as the instance that ``task`` runs for."""
    _OWNERS[task] = owner


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Track task ownership and escaped exceptions on ``loop`` (once; chains what the
    loop already had)."""
    _USERS[loop] = _USERS.get(loop, 0) + 1
    if loop in _INSTALLED:
        return
    _INSTALLED.add(loop)
    previous_factory = loop.get_task_factory()
    _SAVED[loop] = (previous_factory, loop.get_exception_handler())

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any]
        owner = CURRENT.get()
        if owner is not None and not asyncio.iscoroutine(coro) and hasattr(coro, "__await__"):
            # `asyncio.create_task(ctx.llm.chat(...))`: a ctx call answers an awaitable,
            # not a coroutine, and asyncio's TypeError named neither.
            coro = _awaiting(coro)  # type: ignore[arg-type]  # (it has __await__)
        if previous_factory is not None:
            task = previous_factory(loop, coro, **kwargs)  # type: ignore[assignment]
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if owner is not None and type(coro) is not _ASYNCGEN_CLOSE:
            _OWNERS[task] = owner
            owner.spawned(task)
        return task

    loop.set_task_factory(factory)
    previous_handler = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        future = context.get("future")
        exc = context.get("exception")
        owner = owner_of(future)
        if owner is not None and exc is not None and isinstance(future, asyncio.Task):
            owner.escaped(future, exc)
            return
        if previous_handler is not None:
            previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    _guard_stop(loop)
    _watch_unawaited()


def _guard_stop(loop: asyncio.AbstractEventLoop) -> None:
    """Refuse ``loop.stop()`` from an instance's tasks (an instance attribute shadows the
    method; a loop that takes none, such as a compiled one, is left as it is)."""
    stop = loop.stop

    def guarded() -> None:
        if CURRENT.get() is not None:
            raise LoopStopRefused(
                "the agent called loop.stop(): that event loop runs every agent instance "
                "of this worker, so it goes on and this attempt fails (remove the call, "
                "or the library's that makes it)"
            )
        stop()

    with contextlib.suppress(AttributeError):
        loop.stop = guarded  # type: ignore[method-assign]


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    """Give ``loop`` back the task factory and exception handler it had before
    `install` (a factory in Python costs every later ``create_task``), once every
    worker that installed them on this loop has stopped."""
    _USERS[loop] = _USERS.get(loop, 1) - 1
    if _USERS[loop] > 0:
        return
    saved = _SAVED.pop(loop, None)
    if saved is None:
        return
    _INSTALLED.discard(loop)
    loop.set_task_factory(saved[0])
    loop.set_exception_handler(saved[1])
    if "stop" in vars(loop):
        del loop.stop  # the class's own again
    _unwatch_unawaited()


# -- coroutines never awaited ---------------------------------------------------------
#
# Python warns of a coroutine let go unawaited (``client.chat.completions.create(...)``
# without ``await``: the call never happened) through `warnings._warn_unawaited_coroutine`,
# which it looks up each time. While workers run, that hook first tells the instance
# whose code let it go - the coroutine is freed at the agent's line that dropped it, in
# the instance's task - then warns as Python does. One freed by the cyclic collector
# (anywhere, in any instance's turn) is only warned of: who let it go is not known.

_WATCHERS = 0
_PYTHONS_WARNING: Callable[[Any], None] | None = None
_COLLECTING = False


def _collecting(phase: str, info: dict[str, Any]) -> None:
    global _COLLECTING
    _COLLECTING = phase == "start"


def _never_awaited(coroutine: Any) -> None:
    owner = CURRENT.get()
    if owner is not None and not _COLLECTING and isinstance(coroutine, Coroutine):
        with contextlib.suppress(Exception):  # (a report, never a new failure)
            owner.never_awaited(coroutine, sys._getframe(1))
    if getattr(coroutine, "cr_origin", None) is not None and _PYTHONS_WARNING is not None:
        _PYTHONS_WARNING(coroutine)  # (its text names where it was made)
        return
    # Python's own words, at the line that let it go (its hook, called from here, would
    # name this line).
    name = getattr(coroutine, "__qualname__", coroutine)
    warnings.warn(
        f"coroutine '{name}' was never awaited", RuntimeWarning, stacklevel=2, source=coroutine
    )


def _watch_unawaited() -> None:
    global _WATCHERS, _PYTHONS_WARNING
    _WATCHERS += 1
    if _WATCHERS > 1 or not hasattr(warnings, "_warn_unawaited_coroutine"):
        return
    _PYTHONS_WARNING = warnings._warn_unawaited_coroutine
    warnings._warn_unawaited_coroutine = _never_awaited
    gc.callbacks.append(_collecting)


def _unwatch_unawaited() -> None:
    global _WATCHERS, _PYTHONS_WARNING
    _WATCHERS = max(0, _WATCHERS - 1)
    if _WATCHERS or _PYTHONS_WARNING is None:
        return
    warnings._warn_unawaited_coroutine = _PYTHONS_WARNING  # type: ignore[attr-defined]
    _PYTHONS_WARNING = None
    with contextlib.suppress(ValueError):
        gc.callbacks.remove(_collecting)


def unretrieved_exception(task: asyncio.Task[Any]) -> BaseException | None:
    """The exception of a finished task that nobody has retrieved yet (and retrieve it,
    so asyncio does not report it again)."""
    if not task.done() or task.cancelled():
        return None
    if not getattr(task, "_log_traceback", False):
        return None
    return task.exception()
