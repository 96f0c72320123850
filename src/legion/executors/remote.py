"""The remote side: run one agent instance away from its worker.

`execute` imports the agent's function, hands it a `RemoteContext` and
answers an `legion.executors.protocol.Outcome`. The context has the API of
`legion.context.Context`; what needs the store goes to the worker through a
`Link`:

- ``ctx.step(name, fn, ...)`` runs ``fn`` here (that is the agent's own code) and replays
  the steps of earlier attempts here too; a new result is recorded by the worker, and
  ``step`` returns once it is;
- ``ctx.memory``, ``ctx.llm`` and ``ctx.vectors`` are calls to the worker: LLM calls
  share the worker's capacity and are recorded as steps there, as are vector writes;
- ``ctx.log`` sends its records to the worker's logger of the agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import logging
import os
import pickle
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from legion import codec
from legion.agent import Agent
from legion.context import gather, not_a_function, updated
from legion.errors import AgentChanged, AgentLoadError, OutputError, Permanent
from legion.executors import protocol as p
from legion.loader import load_module
from legion.steps import step_key

if TYPE_CHECKING:
    from legion.llm.embeddings import Embeddings
    from legion.llm.types import ChatResponse, Message
    from legion.vectors.types import Hit


class Link(Protocol):
    """How the remote side reaches its worker."""

    async def call(self, op: str, *args: Any) -> Any:
        """Ask the worker and wait for its answer (its error is raised here)."""
        ...

    def notify(self, op: str, *args: Any) -> None:
        """Tell the worker something; no answer."""
        ...


async def execute(invocation: p.Invocation, link: Link) -> p.Outcome:
    """Run one attempt of the agent to its end; never raises (but for cancellation)."""
    link.notify(p.STARTED)
    pid = os.getpid()
    try:
        module, fn = resolve(invocation.ref, invocation.sys_path, invocation.source)
        kwargs = _load_arguments(invocation.kwargs, module)
        result = await fn(RemoteContext(invocation, link), **kwargs)
        _end_a_forked_copy(pid, None)
        return True, codec.dumps(result)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # this instance is being stopped
            raise
        return False, p.pack_error(exc)  # the agent's code raised it itself
    except BaseException as exc:  # SystemExit too: it ends this instance, not this process
        _end_a_forked_copy(pid, exc)
        return False, p.pack_error(exc)


def _end_a_forked_copy(pid: int, exc: BaseException | None) -> None:
    """Exit at once if this is a copy the agent forked (``os.fork()``, its copy ending with
    ``sys.exit`` or returning rather than ``os._exit``): the copy answered the attempt on
    the pipes it inherited, then served the process's next tasks itself, on a broken event
    loop, failing each ("no running event loop") while the process it came from waited on
    it; a copy that returned had its result recorded for another task."""
    if os.getpid() == pid:
        return
    code = exc.code if isinstance(exc, SystemExit) else (0 if exc is None else 1)
    os._exit(code if isinstance(code, int) else 1)


_resolved: dict[str, tuple[ModuleType, Callable[..., Awaitable[Any]]]] = {}


def resolve(
    ref: str, sys_path: Sequence[str] = (), source: tuple[str, bytes] | None = None
) -> tuple[ModuleType, Callable[..., Any]]:
    """Import the agent's function named by ``ref`` (``module:qualname`` or
    ``path.py:qualname``), after putting the worker's import path in front of ours.

    ``source``: the agent's module file and its digest as the worker loaded it; a file
    that changed since (new code written over it under a running worker) is not imported:
    `AgentChanged`."""
    found = _resolved.get(ref)
    if found is not None:
        return found
    if source is not None and (now := file_digest(source[0])) != source[1]:
        what = "changed" if now is not None else "was removed (or cannot be read)"
        raise AgentChanged(
            f"the agent's file {source[0]} {what} since its worker started (new code "
            "written over it under a running worker): a process of the worker runs no other "
            "code than the worker. The worker stops and gives its tasks back; start it again "
            "(or run the same `legion run` command again) to run the new code"
        )
    missing = [entry for entry in sys_path if entry not in sys.path]
    sys.path[:0] = missing
    module_ref, _, qualname = ref.rpartition(":")
    try:
        module = load_module(module_ref)
    except AgentLoadError as exc:
        cause = exc.__cause__
        if isinstance(cause, RuntimeError) and "running event loop" in str(cause):
            raise AgentLoadError(
                f"{exc} (the script runs its main code when it is imported, as a process "
                'of the worker does: put that code under `if __name__ == "__main__":`)'
            ) from cause
        raise
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if isinstance(target, Agent):
        target = target.fn
    if not inspect.iscoroutinefunction(target):
        raise AgentLoadError(f"{ref} does not name an agent's `async def` function here")
    _resolved[ref] = module, target
    return module, target


def file_digest(path: str) -> bytes | None:
    """SHA-256 of the file at ``path`` as it is now, or ``None`` where it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError:
        return None


def _load_arguments(data: bytes, module: ModuleType) -> dict[str, Any]:
    loaded: dict[str, Any] = _ArgumentUnpickler(data, module).load()
    return loaded


class _ArgumentUnpickler(pickle.Unpickler):
    """Finds the classes of a script the worker ran as ``__main__`` in the agent's module:
    an agent defined in a script is that script, imported here under its own name."""

    def __init__(self, data: bytes, module: ModuleType) -> None:
        super().__init__(io.BytesIO(data))
        self._module = module

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__":
            return getattr(self._module, name)
        return super().find_class(module, name)


class RemoteContext:
    """The context an agent instance sees when it runs away from its worker; the same API
    as `legion.context.Context`."""

    __slots__ = ("_counts", "_invocation", "_link", "_llm", "_log", "_memory")

    def __init__(self, invocation: p.Invocation, link: Link) -> None:
        self._invocation = invocation
        self._link = link
        self._counts: dict[str, int] = {}
        self._memory: RemoteMemory | None = None
        self._llm: RemoteLLM | None = None
        self._log: ForwardingLog | None = None

    @property
    def agent(self) -> str:
        return self._invocation.agent

    @property
    def task_id(self) -> int:
        return self._invocation.task_id

    @property
    def attempt(self) -> int:
        """1 on the first try, 2 on the first retry, and so on."""
        return self._invocation.attempt

    @property
    def key(self) -> str | None:
        return self._invocation.key

    @property
    def session(self) -> str:
        return self._invocation.session

    @property
    def memory(self) -> RemoteMemory:
        if self._memory is None:
            self._memory = RemoteMemory(self._link, self.session)
        return self._memory

    @property
    def llm(self) -> RemoteLLM:
        """LLM calls, made (and recorded as steps) by the worker."""
        if self._llm is None:
            self._llm = RemoteLLM(self._link)
        return self._llm

    def vectors(
        self, collection: str, scope: str = "session", *, model: str | None = None
    ) -> RemoteCollection:
        """A vector collection, as `legion.context.Context.vectors`."""
        return RemoteCollection(self._link, collection, scope, model)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records go to the worker's logger of this agent."""
        if self._log is None:
            inv = self._invocation
            extra = {"agent": inv.agent, "task_id": inv.task_id, "attempt": inv.attempt}
            self._log = ForwardingLog(self._link, inv.agent, inv.log_level, extra)
        return self._log

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` here, once per task; the worker records the result.

        Same contract as `legion.context.Context.step`: a step recorded by an earlier
        attempt returns its recorded JSON instead of running, and a new result is durable
        before this returns.
        """
        if not callable(fn):
            not_a_function(name, fn)
        key = step_key(self._counts, name)
        recorded = self._invocation.steps.get(key)
        if recorded is not None:
            return codec.loads(recorded)
        # Asked, not told: the worker answers once its context has begun the step (its
        # lease confirmed), so no step begins after the worker has died or lost the task.
        await self._link.call(p.STEP_START, key)
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            try:
                data = codec.dumps(result)
            except OutputError as exc:  # (say which step, as the worker's context does)
                raise OutputError(f"step {key!r}: {exc}") from None
            await self._link.call(p.STEP_END, key, data)
        except BaseException:
            self._link.notify(p.STEP_ABORT, key)
            raise
        return codec.loads(data)

    # Durable waits are made by the worker's context (see legion.waiting); when one
    # suspends the task, the call raises Suspended here and the instance ends with it.

    async def wait_for(self, event: str, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._link.call(p.WAIT, "wait_for", (event,), {"timeout": timeout})

    async def sleep(self, seconds: float) -> None:
        await self._link.call(p.WAIT, "sleep", (seconds,), {})

    async def approval(self, prompt: str, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._link.call(p.WAIT, "approval", (prompt,), {"timeout": timeout})

    async def spawn(self, agent: Any, input: Any = None) -> Any:
        return await self._link.call(p.WAIT, "spawn", (_agent_name(agent), input), {})

    async def map(self, agent: Any, inputs: Any, *, concurrency: int | None = None) -> Any:
        args = (_agent_name(agent), list(inputs))
        return await self._link.call(p.WAIT, "map", args, {"concurrency": concurrency})

    async def gather(self, *aws: Awaitable[Any], return_exceptions: bool = False) -> list[Any]:
        """Run awaitables concurrently, results in order; as `Context.gather`."""
        return await gather(*aws, return_exceptions=return_exceptions)


class RemoteMemory:
    """Session memory, read and written through the worker."""

    __slots__ = ("_link", "_session")

    def __init__(self, link: Link, session: str) -> None:
        self._link = link
        self._session = session

    @property
    def session(self) -> str:
        return self._session

    async def get(self, key: str, default: Any = None) -> Any:
        found, value = await self._link.call(p.MEMORY_GET, key)
        return value if found else default

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``; returns once it is durable."""
        await self._link.call(p.MEMORY_SET, key, codec.dumps(value))

    async def delete(self, key: str) -> None:
        await self._link.call(p.MEMORY_DELETE, key)

    async def update(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """As `legion.context.Memory.update`: ``change`` runs here, each try's read and
        compare-and-set in the worker."""
        return await updated(key, change, default, self._read_raw, self._swap_raw)

    async def _read_raw(self, key: str) -> bytes | None:
        raw: bytes | None = await self._link.call(p.MEMORY_READ_RAW, key)
        return raw

    async def _swap_raw(self, key: str, expected: bytes | None, value: bytes) -> bool:
        return bool(await self._link.call(p.MEMORY_SWAP, key, expected, value))

    async def items(self) -> dict[str, Any]:
        items: dict[str, Any] = await self._link.call(p.MEMORY_ITEMS)
        return items


class RemoteLLM:
    """``ctx.llm`` away from the worker: each call is made and recorded by the worker."""

    __slots__ = ("_link",)

    def __init__(self, link: Link) -> None:
        self._link = link

    async def chat(
        self,
        messages: Sequence[Message],
        model: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per provider attempt, as ctx.llm.chat
        stream: bool | None = None,
        tier: str = "standard",
        deadline: float | None = None,
        **params: Any,
    ) -> ChatResponse:
        """One chat completion, as `legion.llm.calls.LLMCalls.chat`; a batch-tier call
        suspends the task at the worker, which ends this instance with it."""
        from legion.llm.types import ChatResponse

        if tier != "standard" or deadline is not None:  # the worker's ctx.llm.chat takes them
            params = {**params, "tier": tier, "deadline": deadline}
        sent = [dict(m) for m in messages]
        data = await self._link.call(p.LLM_CHAT, sent, model, timeout, stream, params)
        return ChatResponse.from_json(data)

    async def embed(
        self, texts: Sequence[str], model: str | None = None, **params: Any
    ) -> Embeddings:
        """Embeddings, as `legion.llm.calls.LLMCalls.embed`."""
        from legion.llm.embeddings import Embeddings

        return Embeddings.from_json(await self._link.call(p.LLM_EMBED, list(texts), model, params))

    def openai(self, model: str | None = None) -> Any:
        """Not away from the worker: an SDK client's transport needs the worker's routes."""
        raise _no_sdk("openai")

    def anthropic(self, model: str | None = None) -> Any:
        """Not away from the worker (see `openai`)."""
        raise _no_sdk("anthropic")


def _no_sdk(kind: str) -> Permanent:
    return Permanent(
        f"ctx.llm.{kind}() (and the framework integrations built on it) runs on the async "
        "executor only, not in a child process or on Ray (--executor process|ray): run "
        "this agent without them, or call ctx.llm.chat instead"
    )


class RemoteCollection:
    """``ctx.vectors(...)`` away from the worker: the worker embeds, writes and records."""

    __slots__ = ("_link", "_model", "name", "scope")

    def __init__(self, link: Link, name: str, scope: str, model: str | None) -> None:
        from legion.vectors.types import check_name, check_scope

        self._link = link
        self.name = check_name(name)
        self.scope = check_scope(scope)
        self._model = model

    async def _call(self, op: str, *args: Any) -> Any:
        return await self._link.call(p.VECTORS, self.name, self.scope, self._model, op, args)

    async def add(
        self,
        texts: Sequence[str],
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        from legion.vectors.collection import check_add

        texts, metas, given = check_add(texts, metadata, ids)
        added: list[str] = await self._call("add", texts, metas, given)
        return added

    async def search(
        self, query: str, k: int = 5, where: Mapping[str, Any] | None = None
    ) -> list[Hit]:
        from legion.vectors.types import Hit

        hits = await self._call("search", query, k, dict(where) if where else None)
        return [Hit.from_json(h) for h in hits]

    async def delete(self, ids: Sequence[str]) -> int:
        deleted: int = await self._call("delete", list(ids))
        return deleted


class ForwardingLog(logging.LoggerAdapter[logging.Logger]):
    """Sends records at or above the worker's level to the worker, formatted here."""

    def __init__(self, link: Link, agent: str, level: int, extra: Mapping[str, object]) -> None:
        super().__init__(logging.getLogger(f"legion.agent.{agent}"), extra)
        self._link = link
        self._level = level

    def isEnabledFor(self, level: int) -> bool:
        return level >= self._level

    def log(self, level: int, msg: object, *args: object, exc_info: Any = None, **_: Any) -> None:
        if level < self._level:
            return
        text = str(msg) % args if args else str(msg)
        if exc_info:
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            elif not isinstance(exc_info, tuple):
                exc_info = sys.exc_info()
            if exc_info[0] is not None:
                text += "\n" + logging.Formatter().formatException(exc_info)
        self._link.notify(p.LOG, level, text)


def _agent_name(agent: Any) -> str:
    """An agent travels to the worker by name (the worker knows its agents)."""
    return agent if isinstance(agent, str) else str(agent.name)
