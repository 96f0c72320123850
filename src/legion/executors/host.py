"""The worker side: serve a remote instance's context calls with the real context.

A `ContextHost` answers the calls of one instance (see
`legion.executors.protocol`) against the worker's `legion.context.Context`,
so the worker stays the one writer of the store: a remote step is recorded through
``ctx.step`` (which also times it), memory goes through the journal, LLM calls through
the worker's shared capacity.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from legion import codec
from legion.diagnostics.advisor import GATHERED
from legion.errors import InputError
from legion.executors import protocol as p
from legion.executors.errors import InstanceLost, ProtocolError

if TYPE_CHECKING:
    from legion.agent import Agent
    from legion.context import Context

Reply = Callable[[bool, Any], None]
"""Answers one call: ``(True, value)`` or ``(False, ErrorEnvelope)``."""

_MISSING = object()
_WAITS = frozenset({"wait_for", "sleep", "approval", "spawn", "map"})


def invocation(
    agent: Agent, ctx: Context, kwargs: Mapping[str, Any], source: tuple[str, bytes] | None = None
) -> p.Invocation:
    """What the remote side needs to run this attempt of ``agent`` (``source``: see
    `legion.executors.protocol.Invocation`)."""
    try:
        arguments = p.dumps(dict(kwargs))
    except Exception as exc:  # (the same every attempt: retried, it only died slower)
        raise InputError(
            f"the agent's arguments cannot be sent to the process that runs it (they are "
            f"pickled on the way): {type(exc).__name__}: {exc}; give it arguments that "
            "pickle, or run it in the worker (no executor)"
        ) from exc
    return p.Invocation(
        ref=agent.ref,
        kwargs=arguments,
        agent=ctx.agent,
        task_id=ctx.task_id,
        attempt=ctx.attempt,
        key=ctx.key,
        session=ctx.session,
        steps=dict(ctx.recorded_steps),
        log_level=ctx.log.getEffectiveLevel(),
        sys_path=tuple(sys.path),
        source=source,
    )


class ContextHost:
    """Answers the context calls of one remote instance until `aclose`."""

    __slots__ = ("_calls", "_context", "_ctx", "_steps", "_tasks", "on_started")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        # The attempt's context: calls are served as the instance's own (its waits for
        # capacity count as its waits, its calls queue at its place).
        self._context = contextvars.copy_context()
        self.on_started: Callable[[], None] | None = None
        """Called when the remote side says the instance began to run."""
        self._tasks: set[asyncio.Task[Any]] = set()
        # Steps running remotely: the future gets the result's JSON, the task records it.
        self._steps: dict[str, _RemoteStep] = {}
        self._calls: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {
            p.STEP_START: self._step_start,
            p.STEP_END: self._step_end,
            p.MEMORY_GET: self._memory_get,
            p.MEMORY_SET: self._memory_set,
            p.MEMORY_DELETE: self._memory_delete,
            p.MEMORY_ITEMS: self._memory_items,
            p.MEMORY_READ_RAW: self._memory_read_raw,
            p.MEMORY_SWAP: self._memory_swap,
            p.LLM_CHAT: self._llm_chat,
            p.LLM_EMBED: self._llm_embed,
            p.VECTORS: self._vectors,
            p.WAIT: self._wait,
            p.SETTLE: self._settle,
        }

    def handle(self, op: str, args: Sequence[Any], reply: Reply | None) -> None:
        """Serve one message: a call (answered through ``reply``) or a notification."""
        if reply is None:
            if op == p.STEP_ABORT:
                self._step_abort(args[0])
            elif op == p.STARTED:
                if self.on_started is not None:
                    self.on_started()
            elif op == p.LOG:
                level, message = args
                self._ctx.log.log(level, "%s", message)
            else:
                raise ProtocolError(f"unknown notification {op!r}")
            return
        handler = self._calls.get(op)
        if handler is None:
            reply(False, p.pack_error(ProtocolError(f"unknown call {op!r}")))
            return
        self._spawn(self._answer(handler(*args), reply), f"legion-remote-{op}")

    async def aclose(self) -> None:
        """Stop serving: cancel what is still running (the instance has ended)."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        # A copy each: what one call sets in its context (the span it is in, a gather it
        # runs) stays its own, as it would in tasks the instance made itself.
        context = self._context.copy()
        task = asyncio.get_running_loop().create_task(coro, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _answer(call: Coroutine[Any, Any, Any], reply: Reply) -> None:
        """Answer a call exactly once, also when the instance ends while it is served
        (whatever holds the call for the remote side can then let go of it)."""
        try:
            value = await call
        except asyncio.CancelledError:
            reply(False, p.pack_error(InstanceLost("the instance has ended")))
            raise
        except BaseException as exc:
            reply(False, p.pack_error(exc))
        else:
            reply(True, value)

    # -- steps: started, ended (recorded) or aborted by the remote side -----------------

    def _step(self, key: str) -> _RemoteStep:
        entry = self._steps.get(key)
        if entry is None:
            loop = asyncio.get_running_loop()
            result: asyncio.Future[bytes] = loop.create_future()
            begun: asyncio.Future[None] = loop.create_future()
            recording = self._spawn(_record(self._ctx, key, result, begun), f"legion-step-{key}")
            entry = self._steps[key] = _RemoteStep(result, recording, begun)
        return entry

    async def _step_start(self, key: str) -> None:
        """Answer once the step may run: the worker's context has begun it (its lease
        confirmed lately, as before a step of its own), or raise why not (`LeaseLost`).
        Told without an answer, a remote side whose worker had died ran its next step's
        side effect (a Ray task outlives its driver for a second or more)."""
        step = self._step(key)
        await asyncio.wait((step.begun, step.recording), return_when=asyncio.FIRST_COMPLETED)
        if not step.begun.done():
            step.recording.result()  # (its error: the step may not run)
            raise InstanceLost("the step ended before it began")

    async def _step_end(self, key: str, data: bytes) -> None:
        step = self._step(key)
        if not step.result.done():
            step.result.set_result(data)
        try:
            await step.recording
        finally:
            self._steps.pop(key, None)

    def _step_abort(self, key: str) -> None:
        entry = self._steps.pop(key, None)
        if entry is not None:
            entry.recording.cancel()

    # -- memory and LLM --------------------------------------------------------------

    async def _memory_get(self, key: str) -> tuple[bool, Any]:
        value = await self._ctx.memory.get(key, _MISSING)
        return (False, None) if value is _MISSING else (True, value)

    async def _memory_set(self, key: str, data: bytes) -> None:
        await self._ctx.memory.set(key, codec.loads(data))

    async def _memory_delete(self, key: str) -> None:
        await self._ctx.memory.delete(key)

    async def _memory_items(self) -> dict[str, Any]:
        return await self._ctx.memory.items()

    async def _memory_read_raw(self, key: str) -> bytes | None:
        return await self._ctx.memory.read_raw(key)

    async def _memory_swap(self, key: str, expected: bytes | None, value: bytes) -> bool:
        return await self._ctx.memory.swap_raw(key, expected, value)

    async def _llm_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str | None,
        timeout: float | None,  # noqa: ASYNC109 - passed on to ctx.llm.chat
        stream: bool | None,
        params: Mapping[str, Any],
    ) -> dict[str, Any]:
        response = await self._ctx.llm.chat(
            messages, model, timeout=timeout, stream=stream, **params
        )
        return response.to_json()

    async def _llm_embed(
        self, texts: Sequence[str], model: str | None, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        return (await self._ctx.llm.embed(texts, model, **params)).to_json()

    @staticmethod
    async def _settle() -> None:
        """The notifications sent before this call have been served (see `p.SETTLE`)."""

    async def _wait(self, call: str, args: Sequence[Any], options: Mapping[str, Any]) -> Any:
        """A durable wait, made by the real context: its ``Suspended`` goes back to the
        remote side, which ends the instance with it (see `legion.waiting`)."""
        if call not in _WAITS:
            raise ProtocolError(f"unknown wait {call!r}")
        return await getattr(self._ctx, call)(*args, **options)

    async def _vectors(
        self, name: str, scope: str, model: str | None, op: str, args: Sequence[Any]
    ) -> Any:
        collection = self._ctx.vectors(name, scope, model=model)
        if op == "add":
            return await collection.add(*args)
        if op == "search":
            return [hit.to_json() for hit in await collection.search(*args)]
        if op == "delete":
            return await collection.delete(*args)
        raise ProtocolError(f"unknown vector operation {op!r}")


class _RemoteStep(NamedTuple):
    """A step the remote side runs: its result's JSON when it comes, the recording of it
    by the worker's context, and whether that context has begun the step."""

    result: asyncio.Future[bytes]
    recording: asyncio.Task[Any]
    begun: asyncio.Future[None]


async def _record(
    ctx: Context, key: str, result: asyncio.Future[bytes], begun: asyncio.Future[None]
) -> None:
    """Record a remote step with ``ctx.step``, which times it and writes it to the journal.
    Kept from the advisor's comparisons (as a gathered step is): its inputs and its line
    are the remote side's, which this side never sees (every pair of remote steps read as
    independent, sited at the program that started the worker)."""
    GATHERED.set(True)  # (this task's own context: see `ContextHost._spawn`)
    # The key as the remote side made it (counted, and scoped to its gather's branch:
    # `fetch@1`, which a step's name may not be, so every such step failed the task).
    await ctx.record(key, _decoded, (result, begun), {}, None, keyed=True)


async def _decoded(result: asyncio.Future[bytes], begun: asyncio.Future[None]) -> Any:
    """The remote step's result, once it arrives (``ctx.step`` stores it again as JSON).
    Called once the context has let the step begin: the remote side may run it now."""
    if not begun.done():
        begun.set_result(None)
    return codec.loads(await result)
