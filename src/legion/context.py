"""``Context``: what an agent instance sees of legion.

``ctx.step`` records a result once per task, ``ctx.gather`` runs steps concurrently,
``ctx.memory`` keeps session state in the store. An instance holds nothing that the
store does not also hold, so any worker can run the next attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import math
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, TypeVar, runtime_checkable

from legion import codec, faults, telemetry
from legion.clock import Clock
from legion.diagnostics.advisor import GATHERED, MIN_SAVING, NO_PRINTS, StepTrace, fingerprints
from legion.diagnostics.unawaited import LEGION_CODE, Pending, SiteRef
from legion.errors import (
    AgentCrash,
    LeaseLost,
    MemoryConflict,
    OutputError,
    Permanent,
    StepFunctionError,
)
from legion.journal import Journal
from legion.steps import BRANCH, scoped, step_key
from legion.store.base import ContextStore, SessionMemory
from legion.store.tenancy import scoped_key
from legion.store.types import MemoryWrite
from legion.task import Lease, StepRecord, TaskUsage, paid_call
from legion.waiting import calls as waiting
from legion.waiting.suspend import Suspended

if TYPE_CHECKING:
    from legion.agent import Agent
    from legion.llm.calls import LLMCalls
    from legion.llm.client import LLMClient, Route
    from legion.llm.embeddings import Embeddings
    from legion.llm.types import ChatResponse, Message
    from legion.vectors.collection import Collection
    from legion.vectors.types import Hit

T = TypeVar("T")

# Called before a step runs (not before a replay) with the task's id; answers None to go
# on at once, or something to await first (the worker confirming its leases).
BeforeStep = Callable[[int], Awaitable[None] | None]


class SessionMemoryAPI(Protocol):
    """``ctx.memory``: session memory, JSON values keyed by name (await every call)."""

    @property
    def session(self) -> str: ...

    def get(self, key: str, default: Any = None) -> Awaitable[Any]: ...

    def set(self, key: str, value: Any) -> Awaitable[None]: ...

    def delete(self, key: str) -> Awaitable[None]: ...

    def update(
        self, key: str, change: Callable[[Any], Any], default: Any = None
    ) -> Awaitable[Any]: ...

    def items(self) -> Awaitable[dict[str, Any]]: ...


class LLMAPI(Protocol):
    """``ctx.llm``: LLM calls, each recorded as a step of the task (await every call)."""

    def chat(
        self,
        messages: Sequence[Message],
        model: str | None = None,
        *,
        timeout: float | None = None,
        stream: bool | None = None,
        tier: Literal["standard", "batch"] = "standard",
        deadline: float | None = None,
        **params: Any,
    ) -> Awaitable[ChatResponse]: ...

    def embed(
        self, texts: Sequence[str], model: str | None = None, **params: Any
    ) -> Awaitable[Embeddings]: ...


class CollectionAPI(Protocol):
    """``ctx.vectors(name)``: a vector collection (await every call)."""

    @property
    def name(self) -> str: ...

    def add(
        self,
        texts: Sequence[str],
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> Awaitable[list[str]]: ...

    def search(
        self, query: str, k: int = 5, where: Mapping[str, Any] | None = None
    ) -> Awaitable[list[Hit]]: ...

    def delete(self, ids: Sequence[str]) -> Awaitable[int]: ...


@runtime_checkable
class AgentContext(Protocol):
    """What an agent instance is handed as its first argument, wherever it runs: the
    `Context` of an instance that runs in its worker, or the stand-in of an
    executor that runs it in another process or on a Ray cluster
    (`legion.executors.remote.RemoteContext`). Both behave alike: one contract
    test suite runs on both."""

    @property
    def agent(self) -> str:
        """The agent's name."""
        ...

    @property
    def task_id(self) -> int: ...

    @property
    def attempt(self) -> int:
        """1 on the first try, 2 on the first retry, and so on."""
        ...

    @property
    def key(self) -> str | None:
        """The task's idempotency key, if it has one."""
        ...

    @property
    def session(self) -> str: ...

    @property
    def memory(self) -> SessionMemoryAPI: ...

    @property
    def llm(self) -> LLMAPI: ...

    def vectors(
        self, collection: str, scope: str = "session", *, model: str | None = None
    ) -> CollectionAPI: ...

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    def step(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Awaitable[Any]:
        """Run ``fn(*args, **kwargs)`` once per task and record its result (await it);
        a step recorded by an earlier attempt answers its recorded JSON instead of
        running. The second step of one name is keyed ``name#2`` (`step_key`)."""
        ...

    def gather(self, *aws: Awaitable[Any], return_exceptions: bool = False) -> Awaitable[list[Any]]:
        """Run awaitables concurrently, like ``asyncio.gather``, results in order."""
        ...


_SESSION_AND_KEY = codec.MAX_NAME_BYTES + 512
"""The most UTF-8 bytes of a memory key and its session (its tenant's mark included)
together: PostgreSQL's index entry holds about 2,700."""


UPDATE_TRIES = 100
"""Tries of ``ctx.memory.update`` before `MemoryConflict`: each lost to a write of the
key by another writer between its read and its write."""


async def updated(
    key: str,
    change: Callable[[Any], Any],
    default: Any,
    read: Callable[[str], Awaitable[bytes | None]],
    swap: Callable[[str, bytes | None, bytes], Awaitable[bool]],
) -> Any:
    """``ctx.memory.update``'s tries, wherever its reads and compare-and-sets are made (in
    the worker, or through it from an executor's process): the new value, or
    `MemoryConflict` after `UPDATE_TRIES` lost races."""
    for tries in range(1, UPDATE_TRIES + 1):
        raw = await read(key)
        value = change(default if raw is None else codec.loads(raw))
        if await swap(key, raw, codec.dumps(value)):
            return value
        # (apart from the others: a wait that grows with the tries lost, to 50 ms)
        await asyncio.sleep(random.uniform(0.0, min(0.05, 0.001 * 2 ** min(tries, 6))))
    raise MemoryConflict(
        f"ctx.memory.update({key!r}): the key changed under each of {UPDATE_TRIES} tries "
        "(other writers of the session's key came between each read and its write)"
    )


_KEY_LOCKS: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


def _key_lock(session: str, key: str) -> asyncio.Lock:
    """This process's lock on a session's key while some update of it is under way."""
    lock = _KEY_LOCKS.get((session, key))
    if lock is None:
        lock = _KEY_LOCKS[session, key] = asyncio.Lock()
    return lock


class Memory:
    """Session memory: JSON values keyed by name, shared by every task of one session."""

    __slots__ = ("_check", "_fence", "_journal", "_made", "_now", "_part", "_session", "_store")

    def __init__(
        self,
        store: SessionMemory,
        journal: Journal,
        session: str,
        made: Callable[[Pending[Any]], None],
        fence: tuple[int, int, str | None] | None = None,
        check: Callable[[], None] | None = None,
        part: str | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``fence``: the lease (task id, attempt, owner) that writes come from; the
        store refuses them once it no longer holds. ``check``: called before a write,
        raises once the attempt has ended (a write by a task the agent left running).
        ``part``: what the store keys the session's values by (its tenant's, see
        `Context.stored_session`), ``session`` by default. ``now``: the store's clock
        (an update's time of writing)."""
        self._store = store
        self._journal = journal
        self._session = session
        self._part = session if part is None else part
        self._made = made
        self._fence = fence
        self._check = check
        self._now = now

    @property
    def session(self) -> str:
        return self._session

    def get(self, key: str, default: Any = None) -> Pending[Any]:
        """The value under ``key`` (``default`` if none); ``await`` it."""
        self._checked(key)
        return self._pending(f"ctx.memory.get({key!r})", self._get, (key, default))

    def set(self, key: str, value: Any) -> Pending[None]:
        """Store ``value`` (JSON) under ``key``; ``await`` it: it returns once durable."""
        write = self._write(key, codec.dumps(value))
        return self._pending(f"ctx.memory.set({key!r})", self._put, (write,))

    def delete(self, key: str) -> Pending[None]:
        write = self._write(key, None)
        return self._pending(f"ctx.memory.delete({key!r})", self._put, (write,))

    def update(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Pending[Any]:
        """Replace the value under ``key`` with ``change(value)`` (``default`` when there is
        none), atomically; ``await`` it for the new value, durable. The key is held from
        the read to the write (other updates of it wait their turn), so ``change`` runs
        once, while it is held: keep it quick, with no effects of its own. From an agent
        in an executor's process the update is a compare-and-set instead: where another
        writer changed the key between the read and the write, ``change`` runs again on
        what is there now, and after `UPDATE_TRIES` lost races in a row `MemoryConflict`
        fails the attempt (which is retried)."""
        self._checked(key)
        if not callable(change):
            raise TypeError(f"ctx.memory.update({key!r}, ...) takes a function of the value")
        if self._check is not None:
            self._check()
        return self._pending(f"ctx.memory.update({key!r})", self._update, (key, change, default))

    async def read_raw(self, key: str) -> bytes | None:
        """The stored JSON under ``key`` (for an executor's update, made elsewhere)."""
        self._checked(key)
        return await self._store.memory_get(self._part, key)

    async def swap_raw(self, key: str, expected: bytes | None, value: bytes) -> bool:
        """Write ``value`` (JSON) under ``key`` if it holds ``expected`` now (``None``:
        nothing); whether it did. The step of an update (see `update`)."""
        write = self._write(key, value)
        return await self._store.memory_swap(write, expected, self._now())

    async def _update(
        self, key: str, change: Callable[[Any], Any], default: Any, site: SiteRef
    ) -> Any:
        made: list[Any] = []

        def changed(raw: bytes | None) -> bytes:
            made[:] = [change(default if raw is None else codec.loads(raw))]
            return codec.dumps(made[0])

        # One update of a key at a time from this process (the others wait here, not each
        # on a store connection of its own, which 500 of them would all take), and in the
        # store one transaction that holds the key: no race to lose.
        async with _key_lock(self._part, key):
            await self._store.memory_change(self._write(key, None), changed, self._now())
        return made[0]

    def _checked(self, key: str) -> None:
        """`codec.checked_text` of ``key``, and of the key with its session: a store
        indexes the two together (a long session and a long key that each pass were
        refused by PostgreSQL, after the write's retries, and kept by SQLite)."""
        try:
            codec.checked_text(key, "a memory key")
        except (TypeError, ValueError) as exc:  # (not text, a lone surrogate: for good)
            raise OutputError(str(exc)) from None
        part = self._part
        if len(key) + len(part) > _SESSION_AND_KEY // 4:
            size = len(key.encode()) + len(part.encode())
            if size > _SESSION_AND_KEY:
                raise OutputError(
                    f"the memory key {key[:40]!r} and its session are {size:,} bytes "
                    f"together, past the {_SESSION_AND_KEY:,} a store's index holds "
                    "(name the key, or the session, by a digest of what it stands for)"
                )

    def _write(self, key: str, value: bytes | None) -> MemoryWrite:
        self._checked(key)
        if self._check is not None:
            self._check()
        if self._fence is None:
            return MemoryWrite(self._part, key, value)
        task_id, attempt, owner = self._fence
        return MemoryWrite(self._part, key, value, task_id, attempt, owner)

    def _pending(
        self, what: str, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]
    ) -> Pending[T]:
        pending = Pending(what, fn, args, depth=3)
        self._made(pending)
        return pending

    # (``site``: the line that made the read or write; memory keeps no trace of it.)

    async def _get(self, key: str, default: Any, site: SiteRef) -> Any:
        raw = await self._store.memory_get(self._part, key)
        return default if raw is None else codec.loads(raw)

    def _put(self, write: MemoryWrite, site: SiteRef) -> Awaitable[None]:
        return self._journal.write_memory(write)

    async def items(self) -> dict[str, Any]:
        raw = await self._store.memory_items(self._part)
        return {k: codec.loads(v) for k, v in raw.items()}


class Context:
    """Handed to every agent instance as its first argument."""

    __slots__ = (
        "_before_step",
        "_clock",
        "_counts",
        "_journal",
        "_lease",
        "_llm",
        "_llm_client",
        "_log",
        "_long_end",
        "_made",
        "_memory",
        "_owner",
        "_replayed",
        "_signals_taken",
        "_store",
        "_traces",
        "_usage",
        "_waits_out",
        "agent",
    )

    def __init__(
        self,
        agent: str,
        lease: Lease,
        *,
        store: ContextStore,
        journal: Journal,
        clock: Clock,
        llm: LLMClient | None = None,
        owner: str | None = None,
        before_step: BeforeStep | None = None,
    ) -> None:
        """``owner``: the worker holding ``lease``; every step and memory write names it,
        and the store accepts them only while that lease holds. ``before_step``: asked
        before each step runs (see `BeforeStep`)."""
        self.agent = agent
        self._usage: TaskUsage | None = None  # made at the first LLM call's answer
        # The recorded steps this attempt replayed: made at the first replay.
        self._replayed: set[str] | None = None
        # The steps this attempt ran, for the advisor: made at the first step's end.
        self._traces: list[StepTrace] | None = None
        # The steps and calls made for the agent: made with the first of them.
        self._made: list[Pending[Any]] | None = None
        self._llm_client = llm
        self._llm: LLMCalls | None = None
        self._lease = lease
        self._store = store
        self._journal = journal
        self._clock = clock
        self._owner = owner
        self._before_step = before_step
        self._counts: dict[str, int] = {}
        # When the first step the advisor may compare ended (see `record`).
        self._long_end = math.inf
        self._signals_taken: dict[str, int] | None = None  # made at the first wait
        self._waits_out: set[str] | None = None
        self._memory: Memory | None = None
        self._log: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def task_id(self) -> int:
        return self._lease.id

    @property
    def signals_taken(self) -> dict[str, int]:
        """Signals received so far by this attempt's waits, by event (see legion.waiting)."""
        if self._signals_taken is None:
            self._signals_taken = {}
        return self._signals_taken

    @property
    def waits_out(self) -> set[str]:
        """The events this attempt's waits are waiting for now (see legion.waiting)."""
        if self._waits_out is None:
            self._waits_out = set()
        return self._waits_out

    @property
    def attempt(self) -> int:
        """1 on the first try, 2 on the first retry, and so on."""
        return self._lease.attempt

    @property
    def key(self) -> str | None:
        """The task's idempotency key, if it has one."""
        return self._lease.key

    @property
    def session(self) -> str:
        return self._lease.session or f"task-{self._lease.id}"

    @property
    def stored_session(self) -> str:
        """What the store keys this session's memory and vectors by: the session within
        its task's tenant (`legion.store.tenancy.scoped_key`), so that two tenants' tasks
        naming one session - or guessing another's ``task-<id>`` - share nothing."""
        return scoped_key(self._lease.tenant, self.session, "a session") or self.session

    @property
    def recorded_steps(self) -> Mapping[str, bytes]:
        """Steps recorded by earlier leases of this task (a retry, a recovery, a release),
        by step key, as stored JSON; an executor that runs the agent elsewhere replays
        from these."""
        return self._lease.steps

    @property
    def memory(self) -> Memory:
        if self._memory is None:
            fence = (self._lease.id, self._lease.attempt, self._owner)
            self._memory = Memory(
                self._store,
                self._journal,
                self.session,
                self.made,
                fence,
                self._check_open,
                self.stored_session,
                self._clock.wall,
            )
        return self._memory

    @property
    def usage(self) -> TaskUsage:
        """What this attempt's LLM calls used, replayed calls included."""
        if self._usage is None:
            self._usage = TaskUsage()
        return self._usage

    def usage_json(self) -> bytes | None:
        """`usage` as stored with the task (``None``: no LLM call): this attempt's calls,
        replayed ones included, and the calls earlier attempts recorded that this one did
        not replay, paid for all the same (a prompt that names the attempt makes a new
        call each time). Budgets count it (`legion.run.spending`)."""
        usage, earlier = self._usage, None
        for key, raw in self._lease.steps.items():
            if self._replayed is not None and key in self._replayed:
                continue
            if not key.startswith(("llm.", "vectors.")):
                continue
            paid = paid_call(key, codec.loads(raw))
            if paid is not None:
                if earlier is None:  # (this attempt's own stays as it is)
                    earlier = TaskUsage.of(usage)
                earlier.add(paid)
        if earlier is not None:
            usage = earlier
        return None if usage is None else usage.to_json()

    @property
    def traces(self) -> Sequence[StepTrace]:
        """The steps this attempt ran, in the order they ended (for the advisor)."""
        return self._traces or ()

    @property
    def llm(self) -> LLMCalls:
        """The run's LLM routes; every call is a recorded step (``await ctx.llm.chat(...)``)."""
        if self._llm is None:
            if self._llm_client is None:
                raise Permanent(
                    "no LLM is configured: pass llm= to legion.Runtime, or --llm to legion run"
                )
            self._llm = llm_calls()(self, self._llm_client, Context._batch_chat)
        return self._llm

    def ended(self, *, abandoned: bool = False) -> None:
        """The attempt is over: let go of ``ctx.llm``, which refers back to this context
        (a cycle: every finished attempt that made an LLM call, with its steps, traces
        and lease, was left for the cyclic GC's full collections to find, and held its
        memory until then). Used again (a task the agent spawned that outlives it),
        ``ctx.llm`` is made anew. A step or LLM call made after this does not run: it
        raises, where it would have run its side effect (or paid for a call) and then
        found its record refused. ``abandoned``: the worker ended the attempt while its
        agent ran on after being stopped (see `legion.run.runner.abandon`); such a step
        raises `LeaseLost`."""
        self._llm = None
        self._before_step = (
            functools.partial(_attempt_abandoned, self._lease.attempt)
            if abandoned
            else _attempt_over
        )

    def _check_open(self) -> None:
        """Raise, as a step would, once the attempt has ended (see `ended`): a memory
        write made after it is not written."""
        check = self._before_step
        if check is not None and (
            check is _attempt_over or getattr(check, "func", None) is _attempt_abandoned
        ):
            check(self._lease.id)

    def _batch_chat(
        self,
        route: Route,
        name: str,
        messages: Sequence[Any],
        params: dict[str, Any],
        deadline: float | None,
        standard: Callable[[], Awaitable[dict[str, Any]]],
        site: SiteRef | None,
    ) -> Awaitable[dict[str, Any]]:
        """A batch-tier call of ``ctx.llm`` (`legion.llm.calls.BatchTier`), made by
        `legion.waiting.batch.batch_chat` (a method, not a partial built for every
        instance that calls the LLM)."""
        from legion.waiting.batch import batch_chat

        assert self._llm_client is not None
        return batch_chat(
            self,
            self._store,
            self._clock,
            self._llm_client,
            route,
            name,
            messages,
            params,
            deadline,
            standard,
            site,
        )

    def vectors(
        self, collection: str, scope: str = "session", *, model: str | None = None
    ) -> Collection:
        """A vector collection: ``scope="session"`` (keyed like `memory`) or
        ``"shared"`` (one corpus for every task); ``model`` names the embedding route (by
        default the ``embed`` route, else the default one). See `legion.vectors`."""
        from legion.vectors.collection import Collection

        return Collection(self, self._store, collection, scope, model)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry the agent, task id and attempt."""
        if self._log is None:
            extra = {"agent": self.agent, "task_id": self.task_id, "attempt": self.attempt}
            self._log = logging.LoggerAdapter(
                logging.getLogger(f"legion.agent.{self.agent}"), extra
            )
        return self._log

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Pending[Any]:
        """Run ``fn(*args, **kwargs)`` once per task and record its result (``await`` it).

        When the task runs again (a retry, or after a worker died) a step that completed
        before returns its recorded result instead of running. The result is stored as
        JSON and every run gets that JSON form back, so a first run and a replay see the
        same value. A step called twice with one name is recorded as ``name#2``.

        The result is recorded before this returns; if the process dies after ``fn``'s
        side effect but before the record, the step runs again on the next attempt:
        give such side effects an idempotency key (``ctx.task_id`` and the step name).

        Nothing runs until the step is awaited (or given to `gather`); a step that is
        never awaited is reported on the task, with the line that made it.
        """
        if not callable(fn):
            not_a_function(name, fn)
        pending: Pending[Any] = Pending(f"step `{name}`", self.record, (name, fn, args, kwargs))
        self.made(pending)
        return pending

    def made(self, pending: Pending[Any]) -> None:
        """Keep track of a pending call made for the agent (see `unawaited`)."""
        if self._made is None:
            self._made = [pending]
        else:
            self._made.append(pending)

    def made_any(self) -> bool:
        """Whether the agent made any step or call (awaited or not)."""
        return bool(self._made)

    def unawaited(self) -> list[Pending[Any]]:
        """The steps and calls this instance made and never awaited (not those handed to
        a ``ctx.gather(...)`` that was itself never awaited: that gather is the one to
        report, and "pass it to ctx.gather" would tell them what they did)."""
        if not self._made:
            return []
        left = [p for p in self._made if not p.awaited]
        handed = {  # (a gather's arguments: _called's, the awaitables second)
            id(aw) for p in left if p.what == "ctx.gather(...)" for aw in p.arguments[1]
        }
        return [p for p in left if id(p) not in handed]

    async def record(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        site: SiteRef | None,
        *,
        inputs: tuple[Any, ...] | None = None,
        encode: Callable[[Any], Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
        usage: bool = False,
        keyed: bool = False,
    ) -> Any:
        """The body of `step`: replay or run, record, trace (``site``: the caller;
        ``inputs``: what the step depends on, when not its arguments). ``encode`` turns
        what ``fn`` answers into what is recorded (JSON); ``decode`` turns the recorded
        JSON, replayed or new, into what the step answers; ``usage``: the JSON is an LLM
        call's, counted in `usage` first. With them a caller records a call without a
        coroutine of its own around it (one frame less held while the call is in
        flight). Given both, ``encode`` answers plain JSON (what `codec.loads` would
        read back) and ``decode`` of it rebuilds an answer equal to the one encoded:
        a new answer is then answered as it came, and only a replayed one is
        decoded. ``keyed``: ``name`` is the step's key already, counted and scoped to its
        branch where the step was called (an executor's process), recorded as it is."""
        key = name if keyed else step_key(self._counts, name)
        recorded = self._lease.steps.get(key)
        if recorded is not None:
            if self._replayed is None:
                self._replayed = {key}
            else:
                self._replayed.add(key)
            return self._answer(codec.loads(recorded), decode, usage)
        if self._before_step is not None:
            confirming = self._before_step(self._lease.id)
            if confirming is not None:
                await confirming
        started = self._clock.wall()
        # Whether the advisor may fingerprint its inputs (below), known as it begins: a
        # long step that ended before it began (`_long_end` only moves to the end of a
        # step, and one that ends later ended after this one began).
        compared = self._long_end <= started
        if telemetry.tracing:
            result = await telemetry.traced_step(self._lease, key, fn, *args, **kwargs)
        else:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                if not compared:
                    # Nothing reads them again: a call in flight holds no tuples for them.
                    args = kwargs = inputs = None  # type: ignore[assignment]
                result = await result
        if faults.ARMED:
            faults.hit("step-ran")
        encoded = result if encode is None else encode(result)
        # NaN refused in the agent's own values; an LLM call's answer came as JSON.
        try:
            data = codec.dumps(encoded, finite=encode is None)
        except OutputError as exc:  # (say which step: the agent may have many)
            raise OutputError(f"step {key!r}: {exc}") from None
        finished = self._clock.wall()
        # What the advisor may compare (see legion.diagnostics.advisor): only a step long
        # enough and awaited on its own can be in a report; its inputs only if such a step
        # had ended before it began (the second of a pair), fingerprinted now, as they
        # were when it ran; its result as the JSON recorded, fingerprinted if ever asked.
        prints, kept = NO_PRINTS, None
        gathered = GATHERED.get()
        if finished - started >= MIN_SAVING and not gathered:
            if compared:
                prints = fingerprints(inputs if inputs is not None else (*args, *kwargs.values()))
            self._long_end = min(self._long_end, finished)
            kept = data
        lease = self._lease
        record = StepRecord(lease.id, key, lease.attempt, data, started, finished, self._owner)
        await self._journal.record_step(record)
        if faults.ARMED:
            faults.hit("step-recorded")
        trace = StepTrace(key, site, started, finished, prints, NO_PRINTS, gathered, kept)
        if self._traces is None:
            self._traces = [trace]
        else:
            self._traces.append(trace)
        if encode is None or decode is None:
            return self._answer(codec.loads(data), decode, usage)
        if usage:
            self.usage.add(encoded)
        return result

    def _answer(self, value: Any, decode: Callable[[Any], Any] | None, usage: bool) -> Any:
        """What a step answers from its recorded JSON, replayed or new (see `record`)."""
        if usage:
            self.usage.add(value)
        return value if decode is None else decode(value)

    def step_count(self, name: str) -> int:
        """How many steps named ``name`` this attempt has run or replayed so far (in the
        current branch of a gather: see `legion.steps`)."""
        return self._counts.get(scoped(name), 0)

    # -- durable waiting (see legion.waiting) ------------------------------------------

    # Each answers a `Pending`, as a step does: made and never awaited, the wait, the
    # child or the gather never happened, and the report (or --strict) says so.

    def wait_for(self, event: str, *, timeout: float | None = None) -> Pending[Any]:
        """Wait for the signal ``event`` sent to this task (``legion signal``, the HTTP API,
        ``Runtime.signal``) and answer its data; the n-th wait for an event gets the n-th
        signal of that name, sent before or after. While it waits the task is ``waiting``
        and holds no slot. ``timeout`` (seconds): raise `legion.errors.WaitTimeout`
        if no signal came by then."""
        return self._pending(
            "ctx.wait_for(...)",
            waiting.wait_for,
            (self, self._store, self._clock, event),
            {"timeout": timeout},
        )

    def sleep(self, seconds: float) -> Pending[None]:
        """Sleep durably: the task waits (no slot, no lease) and survives restarts; the
        wake-up time is fixed on the first run."""
        return self._pending("ctx.sleep(...)", waiting.sleep, (self, self._store, seconds))

    def approval(self, prompt: str, *, timeout: float | None = None) -> Pending[waiting.Approval]:
        """Wait for a person to approve: the dashboard shows ``prompt`` with buttons; the
        answer is the signal ``approval`` (data ``{"approved": true|false, ...}``)."""
        return self._pending(
            "ctx.approval(...)",
            waiting.approval,
            (self, self._store, self._clock, prompt),
            {"timeout": timeout},
        )

    def spawn(self, agent: Agent | str, input: Any = None) -> Pending[Any]:
        """Run ``agent`` on ``input`` as a child task and answer its output; this task
        waits suspended meanwhile. Raises `legion.errors.ChildFailed` if the child
        does not succeed."""
        return self._pending(
            "ctx.spawn(...)", waiting.spawn, (self, self._store, self._clock, agent, input)
        )

    def map(
        self, agent: Agent | str, inputs: Iterable[Any], *, concurrency: int | None = None
    ) -> Pending[list[Any]]:
        """Run ``agent`` on each input as child tasks, at most ``concurrency`` unfinished
        at once, and answer their outputs in order; this task waits suspended meanwhile."""
        return self._pending(
            "ctx.map(...)",
            waiting.map_children,
            (self, self._store, self._clock, agent, inputs),
            {"concurrency": concurrency},
        )

    def gather(self, *aws: Awaitable[Any], return_exceptions: bool = False) -> Pending[list[Any]]:
        """Run awaitables concurrently, like ``asyncio.gather``, results in order.

        Fail-fast by default: the first error cancels the others and is raised once they
        have stopped. With ``return_exceptions=True`` every result or error is collected.
        """
        return self._pending(
            "ctx.gather(...)", gather, aws, {"return_exceptions": return_exceptions}
        )

    def _pending(
        self,
        what: str,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
    ) -> Pending[T]:
        """``fn(*args, **kwargs)`` once awaited, kept to report if it never is."""
        pending: Pending[T] = Pending(what, _called, (fn, args, kwargs or {}), depth=3)
        self.made(pending)
        return pending


def _called(
    fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any], site: Any
) -> Awaitable[T]:
    """A `Pending`'s work for `Context._pending` (its site is not passed on)."""
    return fn(*args, **kwargs)


async def gather(*aws: Awaitable[Any], return_exceptions: bool = False) -> list[Any]:
    """What `Context.gather` does, for contexts that live elsewhere (an executor's
    stand-in for the context in another process)."""
    if not aws:
        return []
    loop = asyncio.get_running_loop()
    parent = BRANCH.get()
    tasks = [loop.create_task(_contained(aw, _branch(parent, n, aw))) for n, aw in enumerate(aws)]
    if return_exceptions:
        results = list(await asyncio.gather(*tasks, return_exceptions=True))
        _raise_interrupt(results)
        waits = [r for r in results if isinstance(r, Suspended)]
        if waits:  # a wait is not a result: the task suspends
            raise _first_wait(waits)
        return results
    try:
        done, pending = await _until_error(tasks)
    except asyncio.CancelledError:
        await _cancel_all(tasks)
        raise
    if pending:
        await _cancel_all(list(pending))
    # Read every error (so none is reported as "never retrieved"); raise the first.
    errors = [e for t in _finished(tasks, done) if (e := t.exception()) is not None]
    _raise_interrupt(errors)
    failures = [e for e in errors if not isinstance(e, Suspended)]
    if failures:
        raise failures[0]
    if errors:
        raise _first_wait([e for e in errors if isinstance(e, Suspended)])
    return [t.result() for t in tasks]


async def _until_error(
    tasks: list[asyncio.Task[Any]],
) -> tuple[set[asyncio.Task[Any]], set[asyncio.Task[Any]]]:
    """Wait until every task ended or one failed. A task that suspends at a wait does not
    stop the others: they run on to their own waits (so every batch-tier call of a gather
    is queued before the task suspends, and goes in one batch)."""
    pending: set[asyncio.Task[Any]] = set(tasks)
    done: set[asyncio.Task[Any]] = set()
    while pending:
        ended, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        done |= ended
        if any(
            not t.cancelled() and (e := t.exception()) is not None and not isinstance(e, Suspended)
            for t in ended
        ):
            break
    return done, pending


def _first_wait(waits: list[Suspended]) -> Suspended:
    """The wait a gather suspends at: woken as soon as any of its awaitables' would be
    (a wake-up for one only makes the task replay, the others waiting again). The store
    keeps one of each kind: the first signal waited for, the most children left
    unfinished (the earliest to come), the earliest timer. (It kept the first wait's
    alone, timers apart: a `ctx.map` gathered after a `wait_for` ran its first window,
    then stood still until the signal came, for good if the signal was to follow it.)"""
    if len(waits) == 1:
        return waits[0]
    kinds = [w.wait for w in waits]
    signal = next((w for w in kinds if w.event is not None), None)
    children = [w.children for w in kinds if w.children is not None]
    timers = [w.wake_at for w in kinds if w.wake_at is not None]
    merged = dataclasses.replace(
        signal if signal is not None else kinds[0],
        children=max(children) if children else None,
        wake_at=min(timers) if timers else None,
    )
    return Suspended(merged)


def _branch(parent: str, n: int, aw: Awaitable[Any]) -> str | None:
    """The branch the ``n``-th awaitable of a gather runs in (`legion.steps.BRANCH`), or
    ``None`` for one call of legion's own (a step, an LLM call, a wait: it starts in the
    gather's order, so its key does not depend on timing, and keeps the key it had before
    branches were, which histories recorded then hold)."""
    if isinstance(aw, Pending):
        return None
    code = getattr(aw, "cr_code", None)
    if code is not None and code.co_filename.startswith(LEGION_CODE):
        return None
    return f"{parent}.{n}" if parent else str(n)


async def _contained(aw: Awaitable[T], branch: str | None = None) -> T:
    """Await ``aw`` (in ``branch``, if given); a BaseException that is not cancellation
    becomes `AgentCrash`.

    asyncio re-raises ``SystemExit`` and ``KeyboardInterrupt`` out of the event loop when
    they escape a task, which would take every other instance down with this one.
    """
    GATHERED.set(True)  # this task's own context: the steps it runs are gathered
    if branch is not None:
        BRANCH.set(branch)
    try:
        return await aw
    except (Exception, asyncio.CancelledError, Suspended, GeneratorExit):
        raise  # (GeneratorExit: an abandoned attempt's tasks are closed)
    except KeyboardInterrupt:  # (Ctrl-C: the program's; `gather` raises it in the instance)
        raise _Interrupted from None
    except BaseException as exc:
        raise AgentCrash(exc) from exc


class _Interrupted(Exception):
    """A branch of a gather met Ctrl-C (`KeyboardInterrupt`): carried out of the branch's
    task as an exception (asyncio would raise the interrupt out of the event loop, past
    the instance), and raised again as the interrupt in the instance's own task, where
    the runner gives the attempt back and lets it stop the program."""


def _raise_interrupt(errors: Iterable[object]) -> None:
    if any(isinstance(e, _Interrupted) for e in errors):
        raise KeyboardInterrupt


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _finished(
    tasks: list[asyncio.Task[Any]], done: set[asyncio.Task[Any]]
) -> list[asyncio.Task[Any]]:
    """The tasks that finished by themselves (not cancelled by us), in argument order."""
    return [t for t in tasks if t in done and not t.cancelled()]


@functools.cache
def llm_calls() -> type[LLMCalls]:
    """`LLMCalls`, imported on first use (the LLM layer is not loaded with ``legion``);
    looked up once: an ``import`` statement run on every attempt's first ``ctx.llm``
    cost ~0.6 µs."""
    from legion.llm.calls import LLMCalls

    return LLMCalls


def not_a_function(name: str, fn: Any) -> NoReturn:
    """`Context.step`'s refusal of something to run that is not a function."""
    if inspect.iscoroutine(fn):
        fn.close()  # (never awaited: Python's warning would say so again)
        raise StepFunctionError(
            f"ctx.step({name!r}, ...) was given a coroutine, {fn.__qualname__}(...): pass the "
            f"function and its arguments, ctx.step({name!r}, {fn.__qualname__}, *args), not "
            "a call of it"
        )
    raise StepFunctionError(
        f"ctx.step({name!r}, ...) was given {type(fn).__name__} {fn!r:.60}, not a function to "
        f"run: ctx.step({name!r}, fn, *args)"
    )


def _attempt_abandoned(attempt: int, task_id: int) -> None:
    """`Context.record`'s check before a step once the worker abandoned the attempt."""
    raise LeaseLost(task_id, attempt)


def _attempt_over(task_id: int) -> None:
    """`Context.record`'s check before a step once the attempt has ended."""
    raise RuntimeError(
        f"task {task_id}: its attempt has ended, so this step, call or memory write does not "
        "run (it was made after the agent returned, by a task the agent started that "
        "outlived it)"
    )
