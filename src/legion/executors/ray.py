"""``RayExecutor``: agent instances as Ray tasks, placed by Ray's scheduler.

Needs the ``ray`` extra (``pip install 'legion-runtime[ray]'``); Ray is imported only here, when
the executor starts. The store stays the source of truth: the worker keeps the lease,
the journal and the context, and a Ray task only runs the agent's code. A task whose
Ray worker or node is lost fails with `InstanceLost`, and the agent's retry
policy runs it again (Ray's own retries are off, so that policy is the only one); steps
it recorded before are replayed, not run again.

The remote instance reaches its worker through a *bridge*: a small async Ray actor on
the worker's node. A remote context call goes to the bridge, which holds it until the
worker takes it (the worker long-polls the bridge in batches), and answers it when the
worker does. Only Ray's own connections are used, so it works wherever Ray does (a
cluster address, ``ray://`` clients, a local instance).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import importlib.util
import itertools
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from legion import attempt
from legion.errors import ConfigError
from legion.executors import protocol as p
from legion.executors.errors import ExecutorLost, InstanceLost, ProtocolError
from legion.executors.host import ContextHost, invocation
from legion.executors.remote import execute
from legion.exiting import skip_finalization
from legion.extras import install_hint
from legion.resources import ray_options

if TYPE_CHECKING:
    from legion.agent import Agent
    from legion.context import Context

log = logging.getLogger("legion.executors.ray")

# Most context calls the bridge holds at once (each waiting call is a running actor call).
_MAX_PENDING_CALLS = 100_000
_POLL_BACKOFF_MAX = 2.0  # seconds between tries to reach a bridge that is restarting
LOST_AFTER = 20.0
"""Seconds the bridge may stay out of reach, or Ray's control store (GCS) not answer,
before Ray counts as gone from this node (a bridge that crashed is back within a second
or two; with the control store killed, the instances in flight waited for ever, and
after 60 s Ray's own client ended the process: its tasks leased, the output unwritten)."""
SHUTDOWN_WAIT = 10.0
"""Seconds a closing executor waits for Ray to shut down before it leaves it."""
CHECK_EVERY = 5.0
"""Seconds between two looks at Ray's control store (`RayExecutor._watch_ray`)."""

Request = tuple[int, int | None, str, tuple[Any, ...]]
"""A message for the worker: (instance's call id, token to answer with or None, op, args)."""


class RayExecutor:
    """Runs agent instances as Ray tasks on the cluster at ``address`` (``None``: start a
    private local Ray instance; ``"auto"``: the cluster this machine belongs to;
    ``"ray://host:10001"``: through Ray Client).

    - ``num_cpus`` and ``resources``: what each instance asks Ray's scheduler for; an
      agent's own ``resources=`` add to them (``gpu``: GPUs, ``memory_mb``: memory,
      ``cpu``: CPUs in place of ``num_cpus``), so Ray's autoscaler sees the demand.
    - ``init_options``: more keyword arguments for ``ray.init``.

    When Ray is already initialized in this process, that connection is used as it is
    (and left open at the end).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float = 1.0,
        resources: Mapping[str, float] | None = None,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(f"the ray executor needs Ray: {install_hint('ray')}")
        if num_cpus < 0:
            raise ConfigError("num_cpus must be >= 0")
        if address is not None and not _ADDRESS.match(address):
            raise ConfigError(
                f"bad Ray address {address!r}: give host:port, ray://host:port, auto or local"
            )
        self.address = address
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self._init_options = dict(init_options or {})
        self._by_agent: dict[str, Any] = {}  # Ray tasks asking for an agent's resources
        self._owns_ray = False
        # Set to let the thread that connected to Ray end (see `_connect`).
        self._connected: threading.Event | None = None
        self._remote: Any = None
        self._function: Any = None
        self._bridge: Any = None
        self._bridge_name = f"legion-bridge-{uuid.uuid4().hex}"
        self._pump: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._hosts: dict[int, ContextHost] = {}
        # The instances (their tasks) that Ray has not begun to run yet: it queues them
        # until a worker of theirs is free.
        self._unstarted: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count()
        self._answers: list[tuple[int, bool, Any]] = []
        # The instances waiting on their Ray task, and why Ray is gone when it is: they
        # are then ended with that (`ExecutorLost`), rather than wait for ever.
        self._awaiting: set[asyncio.Task[Any]] = set()
        self._lost: str | None = None

    def check(self, agent: Agent) -> None:
        """Refuse (`ConfigError`) an agent that Ray workers could not import."""
        _ = agent.ref

    async def start(self) -> None:
        """Connect to Ray (or start it), place the bridge on this node, serve it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not ray.is_initialized():
            # ray.init blocks for seconds; the event loop serves other things meanwhile.
            address = "local" if self.address is None else self.address
            self._connected = await _connect(ray, address, self._init_options)
            self._owns_ray = True
        self._function = ray.remote(_run_instance)
        self._remote = self._function.options(
            max_retries=0,  # a lost instance is retried by legion's policy, not Ray's
            retry_exceptions=False,
            num_cpus=self.num_cpus,
            resources=self.resources,
        )
        here = ray.get_runtime_context().get_node_id()
        self._bridge = (
            ray.remote(Bridge)
            .options(
                name=self._bridge_name,  # remote instances find it by name: cheaper than a handle
                num_cpus=0,
                max_concurrency=_MAX_PENDING_CALLS,
                max_restarts=-1,  # a bridge that crashed comes back; its calls fail once
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
            )
            .remote()
        )
        self._pump = asyncio.Task(  # (the executor's own: see `legion.executors.process`)
            self._pump_calls(), name="legion-ray-bridge", context=contextvars.Context()
        )
        self._watch = asyncio.Task(
            self._watch_ray(), name="legion-ray-watch", context=contextvars.Context()
        )

    def queued(self) -> set[asyncio.Task[Any]]:
        """The instances Ray has not begun to run (queued in its scheduler): a worker that
        drains gives them back (see `legion.executors.base.Executor`), rather than wait
        for all of them to run (a Ctrl-C ran a whole backlog, past a 30 s drain). One
        whose start is still on its way to the worker is given back too (cancelled on
        its Ray worker, uncharged)."""
        return self._unstarted

    async def run(self, agent: Agent, ctx: Context, kwargs: Mapping[str, Any]) -> Any:
        """Run one instance as a Ray task; raises what the agent raised, or
        `InstanceLost` when Ray lost the task (its worker or node died)."""
        import ray

        if self._lost is not None:
            raise ExecutorLost(self._lost)
        request = invocation(agent, ctx, kwargs)
        call_id = next(self._ids)
        host = self._hosts[call_id] = ContextHost(ctx)
        # Until the instance runs on a Ray worker, it waits for Ray to schedule it: that
        # is not attempt time.
        scheduling = contextlib.ExitStack()
        scheduling.enter_context(attempt.waiting("Ray to schedule the instance"))
        me = asyncio.current_task()
        if me is not None:
            self._unstarted.add(me)
            scheduling.callback(self._unstarted.discard, me)
        host.on_started = scheduling.close
        ref = self._for(agent).remote(self._bridge_name, call_id, request)
        if me is not None:
            self._awaiting.add(me)
        try:
            outcome: p.Outcome = await ref
        except ray.exceptions.RayTaskError as exc:  # legion's side of the task failed there
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            raise InstanceLost(
                f"the instance failed on its Ray worker: {type(cause).__name__}: "
                f"{_first_line(cause)}"
            ) from exc
        except (ray.exceptions.LocalRayletDiedError, ray.exceptions.RaySystemError) as exc:
            # Ray itself is gone on this node: every instance would fail the same way, each
            # spending its attempts in seconds (a whole queue dead). The worker stops.
            raise ExecutorLost(
                f"Ray stopped running on this node ({type(exc).__name__}): "
                f"{_first_line(exc)}; the worker stops, its tasks go back to the queue"
            ) from exc
        except ray.exceptions.RayError as exc:  # its worker or node died, or its result is gone
            raise InstanceLost(
                f"Ray lost the instance ({type(exc).__name__}): {_first_line(exc)}"
            ) from exc
        except asyncio.CancelledError:
            if self._lost is not None and me is not None and me.uncancel() == 0:
                raise ExecutorLost(self._lost) from None  # (cancelled by `_gone`)
            ray.cancel(ref, force=True)  # kills its Ray worker: a busy loop cannot hold on
            raise
        finally:
            if me is not None:
                self._awaiting.discard(me)
            scheduling.close()
            del self._hosts[call_id]
            await host.aclose()  # answers what it was still serving: the bridge holds nothing
        return p.outcome_value(outcome)

    def _for(self, agent: Agent) -> Any:
        """The Ray task of ``agent``'s instances: asking for the agent's resources."""
        if not agent.options.resources:
            return self._remote
        remote = self._by_agent.get(agent.name)
        if remote is None:
            needs = dict(agent.options.resources)
            options = ray_options(needs, num_cpus=self.num_cpus, resources=self.resources)
            remote = self._by_agent[agent.name] = self._function.options(
                max_retries=0, retry_exceptions=False, **options
            )
        return remote

    async def aclose(self) -> None:
        """Stop serving the bridge and remove it; shut Ray down if this executor started it."""
        import ray

        for background in (self._pump, self._watch):
            if background is not None:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)
        self._pump = self._watch = None
        if self._bridge is not None:
            if self._lost is None:  # (Ray gone: nothing to ask, and no answer would come)
                ray.kill(self._bridge)
            self._bridge = None
        if self._owns_ray:
            # In a daemon thread, waited for at most `SHUTDOWN_WAIT`: with Ray's control
            # store not answering (paused, or gone just as the run ended), its shutdown
            # waits for ever, and a thread of the loop's executor held the process's exit
            # with it (a run whose tasks had all succeeded never ended).
            stopped = _in_a_thread(asyncio.get_running_loop(), ray.shutdown)
            try:
                async with asyncio.timeout(SHUTDOWN_WAIT):
                    await stopped
            except TimeoutError:
                log.warning(
                    "Ray did not shut down within %g s (its control store does not answer): "
                    "leaving it",
                    SHUTDOWN_WAIT,
                )
            finally:  # (timed out, or a second signal cancelled the wait)
                if not stopped.done():
                    atexit.unregister(ray.shutdown)  # (Ray's own, at exit, would wait too)
                    skip_finalization("Ray's shutdown did not return")  # (it crashed there)
                self._owns_ray = False
        if self._connected is not None:
            self._connected.set()
            self._connected = None

    async def _pump_calls(self) -> None:
        """Take the remote instances' calls from the bridge and serve each with its host."""
        import ray

        backoff = 0.05
        loop = asyncio.get_running_loop()
        down_since: float | None = None
        while True:
            try:
                batch: list[Request] = await self._bridge.take.remote()
            except ray.exceptions.RayError as exc:
                log.warning("the Ray bridge is unavailable (%s); retrying", _first_line(exc))
                if down_since is None:
                    down_since = loop.time()
                elif loop.time() - down_since >= LOST_AFTER:
                    self._gone(f"{type(exc).__name__}: {_first_line(exc)}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _POLL_BACKOFF_MAX)
                continue
            backoff = 0.05
            down_since = None
            for call_id, token, op, args in batch:
                self._serve(call_id, token, op, args)

    async def _watch_ray(self) -> None:
        """Ask Ray's control store for the cluster's nodes every `CHECK_EVERY` seconds (one
        question at a time: a thread waits on it); one unanswered for `LOST_AFTER`
        seconds means Ray is gone (`_gone`)."""
        import ray

        loop = asyncio.get_running_loop()
        asked: asyncio.Future[Any] | None = None
        since = 0.0
        while self._lost is None:
            await asyncio.sleep(CHECK_EVERY)
            if asked is None:
                asked, since = _in_a_thread(loop, ray.nodes), loop.time()
            if asked.done():
                asked = None  # (an error answers too: the bridge's loop judges those)
            elif loop.time() - since >= LOST_AFTER:
                self._gone("its control store (GCS) does not answer")

    def _gone(self, why: str) -> None:
        """Ray is gone from this node (its bridge out of reach for `LOST_AFTER` s): every
        instance waiting on it ends with `ExecutorLost` (the worker stops and gives its
        tasks back, no attempt spent), as do those started after."""
        if self._lost is None:
            self._lost = (
                f"Ray stopped answering on this node for {LOST_AFTER:g} s ({why}); the "
                "worker stops, its tasks go back to the queue"
            )
        for task in list(self._awaiting):
            task.cancel()

    def _serve(self, call_id: int, token: int | None, op: str, args: Any) -> None:
        reply = None if token is None else functools.partial(self._answer, token)
        host = self._hosts.get(call_id)
        if host is None:  # the instance has ended; whoever asked is gone or going
            if reply is not None:
                reply(False, p.pack_error(InstanceLost("the instance has ended")))
            return
        try:
            host.handle(op, args, reply)
        except ProtocolError as exc:
            log.error("instance %d: %s", call_id, exc)

    def _answer(self, token: int, ok: bool, value: Any) -> None:
        """Queue an answer; answers made in one turn of the event loop go in one call."""
        self._answers.append((token, ok, value))
        if len(self._answers) == 1:
            asyncio.get_running_loop().call_soon(self._flush_answers)

    def _flush_answers(self) -> None:
        answers, self._answers = self._answers, []
        if self._bridge is not None:
            self._bridge.answer.remote(answers)


def _in_a_thread(
    loop: asyncio.AbstractEventLoop, ask: Callable[[], object]
) -> asyncio.Future[None]:
    """A future set once ``ask()`` returns or raises in a daemon thread of its own: one
    that never returns (Ray's control store gone) holds neither the loop's default
    executor nor the process's exit."""
    answered: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not answered.done():
            answered.set_result(None)

    def run() -> None:
        with contextlib.suppress(Exception):
            ask()
        with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
            loop.call_soon_threadsafe(done)

    threading.Thread(target=run, name="legion-ray-check", daemon=True).start()
    return answered


def _run_instance(bridge_name: str, call_id: int, request: p.Invocation) -> p.Outcome:
    """The Ray task: run one instance in this Ray worker."""
    return asyncio.run(_executed(request, _RayLink(_bridge(bridge_name), call_id)))


async def _executed(request: p.Invocation, link: _RayLink) -> p.Outcome:
    """The instance's outcome, once what it told its worker (its logs) has been served:
    the outcome comes back by another way than the bridge, and the worker dropped what
    came after it (the line logged just before a failure, which said why)."""
    outcome = await execute(request, link)
    if link.told:
        with contextlib.suppress(Exception):  # (the bridge gone: the outcome still counts)
            await link.call(p.SETTLE)
    return outcome


_bridges: dict[str, Any] = {}


def _bridge(name: str) -> Any:
    """The bridge named ``name`` (looked up once per Ray worker process)."""
    found = _bridges.get(name)
    if found is None:
        import ray

        found = _bridges[name] = ray.get_actor(name)
    return found


class _RayLink:
    """The remote side's `legion.executors.remote.Link` through the bridge."""

    __slots__ = ("_bridge", "_call_id", "told")

    def __init__(self, bridge: Any, call_id: int) -> None:
        self._bridge = bridge
        self._call_id = call_id
        self.told = False  # whether a notification went since the last call's answer

    async def call(self, op: str, *args: Any) -> Any:
        self.told = False  # (answered after what was told before it: see `_executed`)
        ok, value = await self._bridge.call.remote(self._call_id, op, args)
        if ok:
            return value
        raise p.unpack_error(value)

    def notify(self, op: str, *args: Any) -> None:
        self._bridge.notify.remote(self._call_id, op, args)
        self.told = True


class Bridge:
    """The mailbox between remote instances and their worker; runs as an async Ray actor
    on the worker's node. A call waits here until the worker answers it (it always does:
    with the answer, an error, or "the instance has ended")."""

    def __init__(self) -> None:
        self._inbox: list[Request] = []
        self._arrived = asyncio.Event()
        self._tokens = itertools.count()
        self._waiting: dict[int, asyncio.Future[tuple[bool, Any]]] = {}

    async def call(self, call_id: int, op: str, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """From a remote instance: ask its worker, return the answer."""
        token = next(self._tokens)
        answer: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = answer
        self._post((call_id, token, op, args))
        try:
            return await answer
        finally:
            del self._waiting[token]

    async def notify(self, call_id: int, op: str, args: tuple[Any, ...]) -> None:
        """From a remote instance: tell its worker something."""
        self._post((call_id, None, op, args))

    async def take(self) -> list[Request]:
        """From the worker: wait for messages, take all that arrived."""
        while not self._inbox:
            self._arrived.clear()
            await self._arrived.wait()
        batch, self._inbox = self._inbox, []
        return batch

    async def answer(self, answers: list[tuple[int, bool, Any]]) -> None:
        """From the worker: answer waiting calls."""
        for token, ok, value in answers:
            waiting = self._waiting.get(token)
            if waiting is not None and not waiting.done():
                waiting.set_result((ok, value))

    def _post(self, request: Request) -> None:
        self._inbox.append(request)
        self._arrived.set()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")
"""What ``ray.init`` takes as a cluster's address."""

CONNECT_TIMEOUT = 60.0
"""Seconds to reach a Ray cluster at a given address before giving up (Ray itself keeps
trying for ever)."""


async def _connect(ray: Any, address: str, options: Mapping[str, Any]) -> threading.Event:
    """``ray.init`` in a thread of its own: a cluster that does not answer is a
    `ConfigError` after `CONNECT_TIMEOUT` (the thread, a daemon, is left to Ray), not a
    run that hangs while Ray retries. The thread lives on until the event answered is
    set: the processes of a local Ray instance it started die with the thread that
    started them (their parent-death signal)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    release = threading.Event()

    def run() -> None:
        try:
            ray.init(address=address, **options)
        except BaseException as exc:  # (handed to the waiting coroutine)
            loop.call_soon_threadsafe(_settle, done, exc)
            return
        loop.call_soon_threadsafe(_settle, done, None)
        release.wait()

    threading.Thread(target=run, name="legion-ray-init", daemon=True).start()
    timeout = None if address == "local" else CONNECT_TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(done)
    except TimeoutError:
        raise ConfigError(
            f"could not reach a Ray cluster at {address} within {CONNECT_TIMEOUT:.0f} s "
            "(is it running, and is --ray-address its GCS address?)"
        ) from None
    except ConnectionError as exc:
        raise ConfigError(f"could not reach a Ray cluster at {address}: {exc}") from None
    return release


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
