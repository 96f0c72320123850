"""``Runtime``: submit tasks, run them, stream their results.

It wires the parts together and holds little logic itself: a `Store`, a
`Worker` (unless ``worker=False``: submit only, other processes run the tasks)
and a follower of the store's event feed that delivers results of tasks finished
anywhere.

::

    async with legion.Runtime("sqlite:///runs.db", concurrency=1000) as rt:
        async for result in rt.map(research, questions):
            print(result.id, result.status, result.output)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Any

from legion import codec
from legion.agent import Agent
from legion.clock import Clock, system_clock
from legion.errors import ConfigError, InputError, OutputError, TaskFailed, WorkerStopped
from legion.run.delivery import GONE, Delivery
from legion.run.worker import Worker, WorkerConfig
from legion.stats import Statistics
from legion.store import Store, store_from_url
from legion.store.tenancy import DEFAULT_TENANT, scoped_key
from legion.store.types import served_agents
from legion.task import NewTask, Submitted, TaskInfo, TaskResult, TaskStatus
from legion.waiting.calls import event_problem
from legion.waiting.family import cascades, requeue_descendants, unfinished_descendants

log = logging.getLogger("legion.runtime")

if TYPE_CHECKING:
    from legion.executors import Executor
    from legion.llm.client import LLMClient
    from legion.llm.config import LLMConfig


MAP_WINDOW = 50_000
"""Tasks `Runtime.map` keeps submitted ahead of the results read: enough to keep any
fleet busy, and a bound on what an endless generator of inputs queues."""

_NO_MORE = object()


class Runtime:
    """Runs agents durably. Use as ``async with Runtime(...) as rt``.

    - ``store``: a URL (``sqlite:///path.db``, ``sqlite:///:memory:``) or a `Store`.
    - ``concurrency``: most agent instances running at once in this process.
    - ``worker``: run tasks in this process (default); ``False`` only submits and watches.
    - ``lease_seconds``: how long a lease lasts without a heartbeat; a worker that dies
      holds its tasks at most this long (less on the same host, where its exit is seen).
    - ``llm``: what ``ctx.llm`` calls. A provider spec (``"sim"``: the built-in
      simulator, started and stopped by the runtime; ``"openai:gpt-4o-mini"``,
      ``"anthropic:MODEL"``, ``"local"``, as ``legion run --llm`` takes) or a list of
      them (one route each, ``"NAME=SPEC"`` to name one): the runtime builds the client
      when it opens and closes it when it closes. So does an `legion.llm.LLMConfig`
      (routes with their limits and prices: ``legion.llm.load_config("legion.toml")``,
      or ``legion.llm.parse_config({...})``, as ``legion run`` reads them). An
      `legion.llm.LLMClient` is used as given and not closed (it may serve several
      runtimes).
    - ``executors``: where agents that ask for ``executor="process"`` or ``"ray"`` run
      (the worker starts and closes them); ``executor`` runs every agent on that one.
      Without one, an agent that asks for ``"process"`` gets a pool of as many child
      processes as CPUs (`legion.executors.ProcessExecutor`; give your own for another
      size or a memory limit); ``"ray"`` needs ``legion.executors.ray.RayExecutor``.
    - ``max_loop_lag``, ``max_memory_mb``: the worker stops leasing while its event loop
      lags more than this many seconds or its memory passes this many MB.
    - ``strict``: a step or call that an agent made and never awaited fails its task
      (otherwise it is reported on the task).
    - ``watchdog``: watch the event loop for agents that block it (and track which
      instance created which task); on by default, cheap.
    - ``lease_ahead``: the most tasks the worker leases ahead of its free slots (a share
      of ``concurrency``), started as slots free, with no store round trip between; how
      many is measured (none while tasks are long; see `legion.run.ahead`). 0: never.
    - ``tenant_max_running``: the most of one tenant's tasks of an agent running at once,
      on every worker of the store (as it counts them; workers leasing at the same moment
      may go a lease over): the worker leases none of a tenant's beyond it.
    - ``drain_timeout``: how long closing waits for running instances to finish before
      giving them back to the queue.
    - ``stop_grace``: seconds an instance has to end once stopped (its timeout, a cancel,
      a lost lease, a release); one whose agent catches `asyncio.CancelledError` and runs
      on is abandoned then: its end is written as the stop calls for, its slot freed.
    - ``clock``: the time the runtime reads, sleeps and sets timers on (a SQLite store
      it opens from a URL too); `legion.testing.FakeClock` in tests.
    """

    def __init__(
        self,
        store: str | Store = "sqlite:///:memory:",
        *,
        concurrency: int = 1000,
        worker: bool = True,
        agents: Sequence[Agent] = (),
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        drain_timeout: float = 30.0,
        stop_grace: float = 10.0,
        clock: Clock = system_clock,
        seed: int | None = None,
        llm: LLMClient | LLMConfig | str | Sequence[str] | None = None,
        executors: Mapping[str, Executor] | None = None,
        executor: str | None = None,
        max_loop_lag: float = 0.5,
        max_memory_mb: float | None = None,
        strict: bool = False,
        watchdog: bool = True,
        offer: Mapping[str, float] | None = None,
        lease_ahead: float = 0.2,
        tenant_max_running: int | None = None,
    ) -> None:
        from legion.llm.client import LLMClient
        from legion.llm.config import LLMConfig
        from legion.llm.specs import config_from_specs

        self._llm_specs: str | Sequence[str] | LLMConfig | None = None
        self.llm: LLMClient | None = None
        if llm is None or isinstance(llm, LLMClient):
            self.llm = llm
        elif isinstance(llm, LLMConfig):
            self._llm_specs = llm
        else:
            config_from_specs(llm)  # a bad spec fails here, before anything opens
            self._llm_specs = llm
        self._executors = dict(executors or {})
        self._executor = executor
        self._owns_store = isinstance(store, str)
        self.store: Store = (
            store_from_url(store, lease_seconds=lease_seconds, clock=clock)
            if isinstance(store, str)
            else store
        )
        self._clock = clock
        self._agents: dict[str, Agent] = {}
        self._config = WorkerConfig(
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            drain_timeout=drain_timeout,
            stop_grace=stop_grace,
            max_loop_lag=max_loop_lag,
            max_memory_mb=max_memory_mb,
            strict=strict,
            watchdog=watchdog,
            offer=dict(offer or {}),
            lease_ahead=lease_ahead,
            tenant_max_running=tenant_max_running,
        )
        self._want_worker = worker
        self._seed = seed
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._draining = False  # drain() stopped the worker (not an error)
        self._tasks: list[asyncio.Task[None]] = []
        self._said_unserved: set[str] = set()  # (agents whose tasks no worker serves)
        self._delivery = Delivery(self.store, local_worker=self._local_worker_id)
        self._open = False
        self._opening = False
        self._closed = False  # (once closed, for good: `open` and calls say so)
        self._loop: asyncio.AbstractEventLoop | None = None  # (the one it opened in)
        for a in agents:
            self.register(a)

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the store and start the local worker. Opening a runtime that is open does
        nothing (a second open started a second worker, which its close never stopped)."""
        if self._closed:
            raise RuntimeError(_CLOSED)
        if self._open:
            return
        if self._opening:
            raise RuntimeError("this Runtime is being opened by another call: await that one")
        self._opening = True
        try:
            await self._open_now()
        finally:
            self._opening = False

    async def _open_now(self) -> None:
        if self._llm_specs is not None and self.llm is None:
            from legion.llm.config import LLMConfig, build_client
            from legion.llm.specs import open_client

            specs = self._llm_specs
            self.llm = await (
                build_client(specs) if isinstance(specs, LLMConfig) else open_client(specs)
            )
        try:
            if self._owns_store:
                await self.store.open()
        except BaseException:
            await self._close_llm()
            raise
        try:
            await self._start()
        except BaseException:
            # Cancelled or failed half-way (a Ctrl-C as a run starts): what was started
            # stops and the store closes, or their tasks outlived the loop's shutdown (a
            # PostgreSQL pool's workers waited on for ever).
            self._open = True
            await self.aclose()
            raise
        self._open = True
        self._loop = asyncio.get_running_loop()

    async def _start(self) -> None:
        """`open`'s part once the store is open: the delivery of results, the local worker
        (returns once it is up) and the follower of the store's feed."""
        await self._delivery.start()
        if self._want_worker:
            self.worker = Worker(
                self.store,
                agents=list(self._agents.values()),
                config=self._config,
                clock=self._clock,
                on_committed=self._delivery.committed,
                on_lost=self._delivery.lost,
                seed=self._seed,
                llm=self.llm,
                executors=self._executors,
                executor=self._executor,
            )
            self._worker_task = asyncio.create_task(self.worker.run(), name="legion-worker")
            self._worker_task.add_done_callback(self._worker_ended)
            # Open returns once the worker is up (registered, its start-up heap settled):
            # or once it has ended, whose error surfaces where it always has.
            started = asyncio.ensure_future(self.worker.started.wait())
            try:
                await asyncio.wait(
                    (started, self._worker_task), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                started.cancel()
        self._tasks.append(asyncio.create_task(self._delivery.follow(), name="legion-events"))

    async def drain(self) -> None:
        """Stop the local worker: running tasks finish (or are released after the drain
        timeout) and everything is committed. The store stays open for reading."""
        if self.worker is not None and self._worker_task is not None:
            self._draining = True
            self.worker.stop()
            await self._worker_task

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        """The local worker's run ended. Unless `drain` asked it to, it stopped on an
        error (one every task would meet, such as a rejected API key, or a crash of its
        own): results waited for (`map`, `results`) would never come, so they raise."""
        if self._draining:
            return
        cause = self.fatal_error
        if cause is None and not task.cancelled():
            cause = task.exception()
        if cause is None and not task.cancelled():
            return  # (a worker that ended with nothing to say: stopped from outside)
        reason = "it was cancelled" if cause is None else str(cause)
        error = WorkerStopped(f"the local worker stopped, so no result will come: {reason}")
        error.__cause__ = cause
        self._delivery.halt(error)

    async def aclose(self) -> None:
        """Drain the local worker, then close. Results still awaited (`result`, `results`,
        `map`) raise `legion.errors.WorkerStopped`: nothing here will deliver them (the
        tasks stay in the store, where another runtime or worker runs them)."""
        if not self._open:
            return
        self._check_loop()
        self._open = False
        await self.drain()
        self._delivery.halt(
            WorkerStopped(
                "the runtime was closed, so no result will come here (the task stays in the "
                "store: a worker on it runs it, and `result` on another runtime answers it)"
            )
        )
        self._delivery.stop()
        pending = set(self._tasks)
        while pending:  # (cancelled again until they end: one cancel can be lost)
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for t in self._tasks:  # (retrieved, as gather(return_exceptions=True) did)
            if not t.cancelled():
                t.exception()
        self._tasks.clear()
        self._closed = True  # (a submit while it drained was taken, and its result raised)
        try:
            if self._owns_store:
                await self.store.aclose()
        finally:
            await self._close_llm()

    async def _close_llm(self) -> None:
        """Close the client this runtime built from specs (one given is the caller's)."""
        if self._llm_specs is not None and self.llm is not None:
            llm, self.llm = self.llm, None
            await llm.aclose()

    @property
    def agent_names(self) -> frozenset[str]:
        """The names of the agents registered with this runtime."""
        return frozenset(self._agents)

    def register(self, agent: Agent) -> None:
        """Make ``agent`` runnable by this runtime's worker (map/submit do it for you)."""
        if not isinstance(agent, Agent):
            raise ConfigError(f"{agent!r} is not an agent: decorate it with @legion.agent")
        existing = self._agents.get(agent.name)
        if existing is agent:
            return
        if existing is not None:
            raise ConfigError(
                f"two different agents are named {agent.name!r} (one defined again, as by a "
                "notebook's cell run twice? give each its own name=, or open a new Runtime "
                "for the new one)"
            )
        self._agents[agent.name] = agent
        if self.worker is not None:
            self.worker.add_agent(agent)

    @property
    def fatal_error(self) -> BaseException | None:
        """An error that stopped the local worker (e.g. a rejected API key), if any."""
        return self.worker.fatal_error if self.worker is not None else None

    def statistics(self) -> Statistics | None:
        """The local worker's counters, or None without a local worker."""
        return self.worker.statistics() if self.worker is not None else None

    def _local_worker_id(self) -> str | None:
        return self.worker.id if self.worker is not None else None

    # -- submitting --------------------------------------------------------------------

    async def submit(
        self,
        agent: Agent,
        input: Any = None,
        *,
        key: str | None = None,
        session: str | None = None,
        priority: int = 0,
        tenant: str = DEFAULT_TENANT,
    ) -> Submitted:
        """Queue one task (of ``tenant``: whose it is, as an API key's tenant; a route
        shares its capacity fairly between tenants). The same ``key`` twice answers the
        first task. An input that does not fit the agent's parameters is refused here
        (`legion.errors.InputError`, nothing queued), as the HTTP API refuses it;
        `submit_many` and `map` queue each input and fail the task of one that does not
        fit, as `legion run` does a line."""
        self.register(agent)  # (refuses what is not an agent, before its input is read)
        try:
            data: bytes | None = codec.dumps(input)
        except OutputError:
            data = None  # (submit_many says so, in its words)
        if data is not None:
            agent.arguments(codec.loads(data))  # (as the worker will read it: JSON)
        (done,) = await self.submit_many(
            agent, [input], keys=[key], session=session, priority=priority, tenant=tenant
        )
        return done

    async def submit_many(
        self,
        agent: Agent,
        inputs: Iterable[Any],
        *,
        keys: Iterable[str | None] | None = None,
        session: str | None = None,
        sessions: Iterable[str | None] | None = None,
        priority: int = 0,
        tenant: str = DEFAULT_TENANT,
        priorities: Iterable[int] | None = None,
    ) -> list[Submitted]:
        """Queue many tasks of ``tenant`` in one transaction (``priorities``: one per
        input, instead of ``priority`` for all)."""
        self._check_loop()
        self.register(agent)
        inputs = list(inputs)
        key_list = list(keys) if keys is not None else [None] * len(inputs)
        session_list = list(sessions) if sessions is not None else [session] * len(inputs)
        priority_list = list(priorities) if priorities is not None else [priority] * len(inputs)
        if len({len(inputs), len(key_list), len(session_list), len(priority_list)}) != 1:
            raise ConfigError("keys, sessions and priorities must have one entry per input")
        attempts = agent.options.retry.max_attempts
        for k in key_list:
            _check_name(k, "an idempotency key")
        for s in session_list:  # (refused now, not at the task's first use of its memory)
            _check_name(s, "a session")
            scoped_key(tenant, s, "a session")
        try:
            tasks = [
                NewTask(
                    agent.name,
                    agent.encode_input(i),
                    k,
                    s,
                    p,
                    attempts,
                    tenant=tenant,
                    needs=agent.needs,
                )
                for i, k, s, p in zip(inputs, key_list, session_list, priority_list, strict=True)
            ]
        except OutputError as exc:  # nothing is queued: say which input it was
            raise InputError(_unstorable(inputs, exc)) from exc
        return await self.submit_tasks(tasks)

    async def submit_tasks(self, tasks: Sequence[NewTask]) -> list[Submitted]:
        """Queue tasks whose inputs are encoded already, in one transaction (their agents
        must be registered). A key sent again with another input raises
        `legion.errors.IdempotencyConflict` and queues nothing."""
        submitted = await self.store.submit(tasks, self._clock.wall())
        if self.worker is not None:
            self.worker.wake(urgent=sum(1 for t in tasks if t.priority > 0))
        return submitted

    # -- results -----------------------------------------------------------------------

    async def map(
        self,
        agent: Agent,
        inputs: Iterable[Any],
        *,
        keys: Iterable[str | None] | None = None,
        session: str | None = None,
        priority: int = 0,
        chunk_size: int = 5000,
        window: int = MAP_WINDOW,
    ) -> AsyncIterator[TaskResult]:
        """Submit one task per input and yield each result as it finishes.

        ``inputs`` (and ``keys``, one per input) are read as they are submitted, a chunk
        of ``chunk_size`` at a time, and never more than ``window`` tasks ahead of the
        results read: a generator is read as the tasks go, an endless one included.

        With ``keys`` the call is resumable: tasks that finished before are answered from
        the store, unfinished ones are run. A task purged from the store (`legion purge`)
        before its end was read yields nothing, as `results` skips it.
        """
        self._check_loop()
        if chunk_size < 1 or window < 1:
            raise ConfigError("chunk_size and window must be at least 1")
        if isinstance(inputs, Sized) and isinstance(keys, Sized) and len(inputs) != len(keys):
            # (refused before anything is queued; iterators' lengths are seen as they go)
            raise ConfigError("keys must have one entry per input")
        values = iter(inputs)
        names = iter(keys) if keys is not None else None
        inbox = self._delivery.inbox()
        watched: set[int] = set()  # (not every task's id of an endless map: until it ends)

        def deliver(result: TaskResult) -> None:
            watched.discard(result.id)
            inbox.put(result)

        expected = 0  # results submitted and not yet yielded
        more = True
        # Submitted again once this much of the window is free: not a task or two as each
        # result is read (a transaction each).
        refill = min(chunk_size, max(1, window // 2))
        try:
            while more or expected:
                while more and window - expected >= refill:
                    chunk = list(itertools.islice(values, min(chunk_size, window - expected)))
                    chunk_keys = (
                        [None] * len(chunk)
                        if names is None
                        else list(itertools.islice(names, len(chunk)))
                    )
                    if len(chunk_keys) < len(chunk):
                        raise ConfigError("keys must have one entry per input: they ran out")
                    if not chunk:
                        more = False
                        if names is not None and next(names, _NO_MORE) is not _NO_MORE:
                            raise ConfigError("keys must have one entry per input: more keys")
                        break
                    submitted = await self.submit_many(
                        agent, chunk, keys=chunk_keys, session=session, priority=priority
                    )
                    del chunk, chunk_keys  # (what a chunk holds, not held while it runs)
                    expected += len(submitted)
                    await self._delivery.watch(submitted, deliver, watched)
                    del submitted
                    while inbox:
                        expected -= 1
                        result = inbox.take()
                        if result.error is not GONE:
                            yield result
                if not expected:
                    continue
                if not inbox:
                    await inbox.wait()
                expected -= 1
                result = inbox.take()
                if result.error is not GONE:  # (purged before its end was read: skipped)
                    yield result
        finally:
            for task_id in watched:
                self._delivery.unwatch(task_id, deliver)

    def results(self, ids: Sequence[TaskRef]) -> AsyncGenerator[TaskResult, None]:
        """Yield the results of these tasks as they finish (each named by its id, or by
        what `submit` answered for it): one per task, an id given twice answered once,
        and an id of no task skipped (`result` raises `TaskFailed` for one), as is a task
        purged (`legion purge`) before its end was read: count the results, not the ids."""
        self._check_loop()
        return self._delivery.results([task_id_of(i) for i in ids], self._look_for_workers)

    def _look_for_workers(self, agents: set[str]) -> None:
        """Results are awaited of tasks of ``agents``: say of each that no live worker
        serves (once), or the wait goes on in silence (a Runtime opened to read results
        by id, its agents not registered: its worker runs none of them)."""
        mine = set(self._agents) if self.worker is not None else set()
        unknown = agents - mine - self._said_unserved
        if unknown and self._open:
            self._said_unserved |= unknown
            self._tasks.append(asyncio.create_task(self._say_if_unserved(unknown)))

    async def _say_if_unserved(self, agents: set[str]) -> None:
        try:
            workers, now = await self.store.workers(), await self.store.now()
        except Exception:  # (a warning only: the wait goes on as it would)
            return
        for agent in sorted(agents - served_agents(workers, now)):
            log.warning(
                "the tasks of agent %r wait for a worker, and no live worker serves it: this "
                "Runtime's worker runs the agents registered with it (rt.register(agent), or "
                "Runtime(agents=[...])), a `legion worker --app FILE` those FILE defines",
                agent,
            )

    async def result(self, task_id: TaskRef, *, raise_on_failure: bool = False) -> TaskResult:
        """Wait until the task finishes and answer how it ended."""
        task_id = task_id_of(task_id)
        async for r in self.results([task_id]):
            if raise_on_failure and not r.ok:
                raise TaskFailed(r.id, r.status, r.error.brief() if r.error else None)
            return r
        raise TaskFailed(task_id, "unknown", {"type": "NotFound", "message": "no such task"})

    async def get(self, task_id: TaskRef) -> TaskInfo | None:
        self._check_loop()
        return await self.store.get(task_id_of(task_id))

    def _check_loop(self) -> None:
        """Refuse a call from another event loop than the one the runtime opened in: its
        results are delivered there (a result awaited in another loop was never woken)."""
        if self._closed:
            raise RuntimeError(_CLOSED)
        loop = self._loop
        if loop is not None and asyncio._get_running_loop() not in (loop, None):
            raise RuntimeError(
                "this Runtime was opened in another event loop, where its results are "
                "delivered: call it from that loop (from another thread: "
                "asyncio.run_coroutine_threadsafe(coro, loop)), or open a Runtime per loop"
            )

    async def cancel(self, task_id: TaskRef, *, children: bool = False) -> TaskStatus | None:
        """Cancel a task: a queued one at once, a running one as soon as its worker sees it.
        ``children``: its unfinished descendants too (the child tasks it started with
        ``ctx.spawn`` and ``ctx.map``, theirs, ...); without it they run on, and a retry of
        the task picks them up again."""
        self._check_loop()
        task_id = task_id_of(task_id)
        status = await self.store.cancel(task_id, self._clock.wall())
        if self.worker is not None:
            self.worker.cancel_local(task_id)
        if children and cascades(status):  # (a refused cancel changes nothing)
            for child in await unfinished_descendants(self.store, task_id):
                await self.store.cancel(child, self._clock.wall())
                if self.worker is not None:
                    self.worker.cancel_local(child)
        return status

    async def signal(
        self, task_id: TaskRef, event: str, data: Any = None, *, waiting: int | None = None
    ) -> TaskStatus | None:
        """Send the signal ``event`` with JSON ``data`` to a task: a task waiting for it
        (``ctx.wait_for``) is queued again; one that waits for it later receives it then.
        Answers the task's status after (``None``: no such task); a finished task gets
        none. ``waiting=N``: an answer to one wait alone, the task's wait for the N-th
        signal ``event`` (what ``count`` shows for it in `legion.store.WaitingInfo`):
        unless the task waits for it now, nothing is kept and
        `legion.errors.NotAwaited` is raised (a second click of an approval button must
        not answer the task's next approval)."""
        self._check_loop()
        task_id = task_id_of(task_id)
        if problem := event_problem(event):  # (as `legion signal` and the HTTP API refuse)
            raise ValueError(problem)
        status = await self.store.signal(
            task_id, event, _signal_data(event, data), self._clock.wall(), waiting=waiting
        )
        if status is TaskStatus.QUEUED and self.worker is not None:
            self.worker.wake()
        return status

    async def retry(self, task_id: TaskRef, *, children: bool = False) -> bool:
        """Queue a dead, failed or cancelled task again with a fresh attempt budget.
        ``children``: its descendants that ended dead, failed or cancelled too, before it
        (a rerun parent finds its children by their keys: one cancelled with it would
        fail it again). ``False``, and nothing queued, if the task cannot be retried;
        `legion.errors.StillStopping`, nothing queued, while some of its descendants' cancel
        is not yet taken by their worker (retry once they have ended)."""
        self._check_loop()
        task_id = task_id_of(task_id)
        if children and await requeue_descendants(self.store, task_id) is None:
            return False
        ok = await self.store.requeue_one(task_id)
        if ok and self.worker is not None:
            self.worker.wake()
        return ok


_CLOSED = "this Runtime is closed (a Runtime opens once): make a new one"


def _signal_data(event: str, data: Any) -> bytes:
    """``data`` as the JSON a signal keeps, or `ValueError` saying why it cannot be sent:
    what `legion signal` and the HTTP API refuse (deeper than `codec.MAX_DEPTH`, which the
    task's record of the signal, one level more, could not store: the task failed when it
    received it), and what is not JSON."""
    try:
        encoded = codec.dumps(data)
        codec.loads_given(encoded)
    except OutputError as exc:
        why = str(exc).removeprefix("cannot store value as JSON: ")
        raise ValueError(f"the data of signal {event!r} cannot be sent as JSON: {why}") from None
    except codec.JSONDecodeError as exc:
        raise ValueError(f"the data of signal {event!r} is {exc.msg}") from None
    return encoded


TaskRef = int | Submitted
"""A task, named by its id or by what `Runtime.submit` answered for it."""


def _check_name(value: object, what: str) -> None:
    """An idempotency key or a session: ``None``, or text every store can hold (not
    empty, no NUL, no lone surrogate); else a `ConfigError` before anything is queued."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} is a non-empty str (or None), not {value!r}")
    if "\x00" in value:
        raise ConfigError(f"{what} cannot hold a NUL character: {value!r}")
    try:
        codec.checked_text(value, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def task_id_of(task: TaskRef) -> int:
    """The id of ``task``, or a `TypeError` that says what names a task."""
    if type(task) is int:
        return task
    if isinstance(task, Submitted):
        return task.id
    if isinstance(task, int) and not isinstance(task, bool):
        return int(task)
    raise TypeError(
        f"a task is named by its id (an int) or by what submit answered, not "
        f"{type(task).__name__} {task!r}"
    )


def _unstorable(inputs: Sequence[Any], error: OutputError) -> str:
    """Which of ``inputs`` JSON cannot hold, and why (nothing was submitted)."""
    for n, value in enumerate(inputs):
        try:
            codec.dumps(value)
        except OutputError as exc:
            reason = str(exc).removeprefix("cannot store value as JSON: ")
            if len(inputs) == 1:
                return f"the input cannot be stored as JSON ({reason}); it was not queued"
            return (
                f"input {n} of the {len(inputs)} submitted together cannot be stored as JSON "
                f"({reason}); none of them was queued"
            )
    return f"{error}; none of the {len(inputs)} inputs submitted together was queued"
