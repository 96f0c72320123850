"""``ProcessExecutor``: every agent instance in a child process of a bounded pool.

Hard isolation: a segfault, a memory bomb or a CPU-bound loop in one agent ends that
task only, with a clear reason, while the worker's event loop and the other instances
go on. The worker keeps the lease, the journal and the context; the child runs the
agent's code (steps included) and reaches the worker over its pipes
(`legion.executors._pipe`, `legion.executors.protocol`).

- A child runs one instance at a time and is reused by the next one. A child that dies
  (or is killed, or hit its memory limit) is not reused; a new one starts on demand.
- ``memory_limit_mb`` caps each child's address space (``RLIMIT_AS``). Address space
  runs ahead of resident memory (the interpreter alone maps ~40 MB; each thread's
  stack and malloc arena reserve more), so leave room above what the agent needs.
- Cancelling an instance (its timeout, ``rt.cancel``, a draining worker that gives up)
  kills its child at once, with its process group: code that does not yield, or
  blocks in native code, cannot hold the slot. Its ``finally`` blocks do not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import resource
import signal
import sys
import tempfile
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from legion import attempt
from legion.errors import ConfigError
from legion.executors import _pipe
from legion.executors import protocol as p
from legion.executors._child import BROKEN_EXIT, MEMORY_EXIT
from legion.executors.errors import InstanceLost, MemoryLimitExceeded, ProtocolError
from legion.executors.host import ContextHost, invocation
from legion.executors.remote import file_digest

if TYPE_CHECKING:
    from legion.agent import Agent
    from legion.context import Context

_BOOT = "from legion.executors._child import main; main()"
_CLOSE_GRACE = 5.0  # seconds an idle child gets to exit by itself at shutdown


MAX_LIMIT_MB = 2**43 - 1
"""The largest --memory-limit: in bytes, what an address-space limit (a C long) holds."""


class ProcessExecutor:
    """Runs agent instances in a pool of at most ``processes`` child processes (default:
    the CPUs this process may use), each capped at ``memory_limit_mb`` if given."""

    name = "process"

    def __init__(self, *, processes: int | None = None, memory_limit_mb: int | None = None):
        if processes is not None and processes < 1:
            raise ConfigError("processes must be >= 1")
        if memory_limit_mb is not None and not 1 <= memory_limit_mb <= MAX_LIMIT_MB:
            # (past it, setrlimit fails in every child: each task would die unstarted)
            raise ConfigError(f"memory_limit_mb must be from 1 to {MAX_LIMIT_MB:,}")
        hard = _hard_memory_limit_mb()
        if memory_limit_mb is not None and hard is not None and memory_limit_mb > hard:
            # (a child may lower its limit, never raise it past the hard one: each task
            # died unstarted, using up its attempts)
            raise ConfigError(
                f"--memory-limit {memory_limit_mb} MB is above this process's hard limit on "
                f"memory ({hard:,} MB: ulimit -v), which its children inherit: give at "
                "most that"
            )
        self.processes = processes or _cpu_count()
        self.memory_limit_mb = memory_limit_mb
        self._slots = asyncio.Semaphore(self.processes)
        self._queued: set[asyncio.Task[Any]] = set()  # instances waiting for a child
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        self._env = _child_env(memory_limit_mb)
        self._sources: dict[str, tuple[str, bytes] | None] = {}  # agent ref -> file, digest

    def check(self, agent: Agent) -> None:
        """Refuse (`ConfigError`) an agent that a child process could not import, and note
        its module file's digest as loaded here: a child that imports the file changed
        (new code written over it under this worker) refuses to run it."""
        ref = agent.ref
        path = getattr(sys.modules.get(agent.fn.__module__), "__file__", None)
        if ref not in self._sources and path:
            digest = file_digest(path)
            self._sources[ref] = (path, digest) if digest is not None else None

    async def start(self) -> None:
        """Nothing to do: children start when instances need them."""

    async def run(self, agent: Agent, ctx: Context, kwargs: Mapping[str, Any]) -> Any:
        """Run one instance in a child; raises what the agent raised, or
        `InstanceLost` when its child died."""
        request = invocation(agent, ctx, kwargs, self._sources.get(agent.ref))
        async with contextlib.AsyncExitStack() as stack:
            # Waiting for a free child (or for a new one to start) is not attempt time.
            with attempt.waiting("a free child process"):
                task = asyncio.current_task()
                if task is not None:
                    self._queued.add(task)
                try:
                    await stack.enter_async_context(self._slots)
                finally:
                    self._queued.discard(task)
                child = self._idle_child() or await self._spawn()
            outcome: p.Outcome | None = None
            try:
                outcome = await child.invoke(request, ctx)
            finally:
                if outcome is not None and not _memory_error(outcome):
                    self._idle.append(child)
                else:  # dead, killed on cancellation, or its heap is spent: do not reuse
                    self._children.discard(child)
                    await child.kill()
        return p.outcome_value(outcome, memory_limit_mb=self.memory_limit_mb)

    def queued(self) -> set[asyncio.Task[Any]]:
        """The instances waiting for a free child (see `legion.executors.base.Executor`)."""
        return self._queued

    async def aclose(self) -> None:
        """Stop every child: idle ones are asked to exit, any other is killed."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(child.close() for child in idle))
        for child in idle:
            self._children.discard(child)
        busy, self._children = self._children, set()
        await asyncio.gather(*(child.kill() for child in busy))

    def _idle_child(self) -> _Child | None:
        """The idle child that ran last (warm caches), skipping any that died meanwhile."""
        while self._idle:
            child = self._idle.pop()
            if child.alive:
                return child
            self._children.discard(child)
            child.forget()
        return None

    async def _spawn(self) -> _Child:
        child = await _Child.spawn(self.memory_limit_mb, self._env)
        self._children.add(child)
        return child


class _Child:
    """One child process, seen from the worker."""

    __slots__ = ("_crash_log", "_exited", "_limit", "_proc", "_reader", "_watch", "_writer")

    def __init__(
        self, proc: asyncio.subprocess.Process, crash_log: IO[bytes], limit: int | None
    ) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._reader = proc.stdout
        self._writer = proc.stdin
        self._crash_log = crash_log
        self._limit = limit
        self._exited = asyncio.Event()
        # The executor's, not the agent's whose attempt started the child: made apart
        # from the loop's task factory (which gives a task to the instance that makes it:
        # its diagnostics said the agent left a task running) and from the instance's
        # context (which it would keep alive as long as the child lives).
        self._watch = asyncio.Task(self._watch_exit(), context=contextvars.Context())

    async def _watch_exit(self) -> None:
        """Once the child has exited, say so, and end its pipe, even while a process it
        forked holds the pipe open (a crash was taken for a hang, the attempt's whole
        timeout)."""
        await _exit_of(self._proc.pid)
        self._exited.set()
        await asyncio.sleep(_EOF_GRACE)  # (what it wrote before it exited is read first)
        if not self._reader.at_eof():
            self._reader.feed_eof()

    async def _exit_code(self) -> int:
        """The child's exit code, once it has exited. (`Process.wait` returns only once
        its pipes have closed too, which a process it forked may hold open.)"""
        await self._exited.wait()
        while True:  # (asyncio sets it as it reaps the child, a moment after its exit)
            code = self._proc.returncode
            if code is not None:
                return code
            await asyncio.sleep(0.01)

    @classmethod
    async def spawn(cls, memory_limit_mb: int | None, env: Mapping[str, str]) -> _Child:
        """Start a child and wait until it can take work."""
        crash_log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by kill() or forget()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _BOOT,
                str(crash_log.fileno()),
                str(memory_limit_mb or 0),
                str(os.getpid()),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(crash_log.fileno(),),
                env=env,
                start_new_session=True,  # a Ctrl-C meant for the worker does not reach it
            )
        except BaseException:
            crash_log.close()
            raise
        child = cls(proc, crash_log, memory_limit_mb)
        try:
            if await _pipe.read_frame(child._reader) != (_pipe.READY,):
                lost = await child._death()
                raise type(lost)(f"the agent's process could not start: {lost}") from (
                    lost.__cause__
                )
        except BaseException:
            await child.kill()
            raise
        return child

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None

    def forget(self) -> None:
        """Let go of a child that exited by itself (asyncio has reaped it), and of what it
        started."""
        self._kill_group()
        self._watch.cancel()
        self._writer.close()
        self._crash_log.close()

    def _kill_group(self) -> None:
        """Kill the child's process group: the processes it started (a subprocess, a pool
        of its own), which outlived it as orphans and held the run's output open."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    async def invoke(self, request: p.Invocation, ctx: Context) -> p.Outcome:
        """Run one instance; serve its context calls until it answers its outcome."""
        host = ContextHost(ctx)
        try:
            self._writer.write(_pipe.frame((_pipe.RUN, request)))
            while True:
                message = await _pipe.read_frame(self._reader)
                if message is None:
                    raise await self._death()
                kind = message[0]
                if kind == _pipe.DONE:
                    outcome: p.Outcome = message[1]
                    return outcome
                if kind == _pipe.CALL:
                    _, call_id, op, args = message
                    host.handle(op, args, functools.partial(self._reply, call_id))
                elif kind == _pipe.NOTIFY:
                    host.handle(message[1], message[2], None)
                else:
                    raise ProtocolError(f"unexpected message {kind!r} from the agent's process")
        finally:
            await host.aclose()

    def _reply(self, call_id: int, ok: bool, value: Any) -> None:
        try:
            data = _pipe.frame((_pipe.REPLY, call_id, ok, value))
        except Exception as exc:  # an answer that does not pickle
            data = _pipe.frame((_pipe.REPLY, call_id, False, p.pack_error(exc)))
        self._writer.write(data)

    async def _death(self) -> InstanceLost:
        """Why the child ended (it has closed its pipe); its crash report as the cause."""
        code = await self._exit_code()
        self._crash_log.seek(0)
        report = self._crash_log.read().decode("utf-8", "replace").strip()
        if code == MEMORY_EXIT:
            error: InstanceLost = MemoryLimitExceeded(p.memory_message(self._limit))
        elif code == BROKEN_EXIT:
            last = report.splitlines()[-1] if report else "see its stderr"
            hint = (
                f" (--memory-limit {self._limit} MB may be too little for the process "
                "itself: the interpreter alone maps ~40 MB)"
                if self._limit is not None and any(m in report for m in _OUT_OF_MEMORY)
                else ""
            )
            error = InstanceLost(f"the agent's process failed outside the agent: {last}{hint}")
        elif code < 0:
            hint = (
                f" (under --memory-limit {self._limit} MB: a library that crashes rather than "
                "raise MemoryError when it cannot allocate ends this way, orjson encoding a "
                "result of hundreds of MB does; with little data in hand, it is a crash of "
                "the agent's code or a library's, whose stack is the task's traceback)"
                if self._limit is not None and -code in (signal.SIGSEGV, signal.SIGBUS)
                else ""
            )
            error = InstanceLost(f"the agent's process was killed by {_signal_name(-code)}{hint}")
        else:
            error = InstanceLost(f"the agent's process exited with code {code}")
        if report:
            error.__cause__ = p.RemoteTraceback(report)
        return error

    async def kill(self) -> None:
        """Kill the child and what it started (its process group, also once the child has
        exited), and reap it."""
        self._kill_group()
        self._writer.close()
        await self._exit_code()
        self._watch.cancel()
        self._crash_log.close()

    async def close(self) -> None:
        """Ask the child to exit (end of its input); kill it if it does not."""
        self._writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE):
                await self._exit_code()
        await self.kill()


async def _exit_of(pid: int) -> None:
    """Return once process ``pid`` (a child of ours, not yet reaped) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or gone already: (rare) polled
        with contextlib.suppress(ProcessLookupError, PermissionError):
            while True:
                os.kill(pid, 0)
                await asyncio.sleep(0.5)
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


_EOF_GRACE = 1.0
"""Seconds after a child exits before its pipe counts as ended though still open."""

_OUT_OF_MEMORY = ("MemoryError", "failed to map segment", "Cannot allocate memory")
"""What a child that its address-space limit stopped before the agent ran reports."""


def _memory_error(outcome: p.Outcome) -> bool:
    ok, payload = outcome
    return not ok and (payload.module, payload.qualname) == ("builtins", "MemoryError")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _hard_memory_limit_mb() -> int | None:
    """The hard limit on address space this process's children inherit, in MB (``None``:
    none)."""
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    return None if hard == resource.RLIM_INFINITY else hard // 2**20


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _child_env(memory_limit_mb: int | None) -> dict[str, str]:
    env = dict(os.environ)
    # legion (and the agents' modules) import in the child as they do here.
    env["PYTHONPATH"] = os.pathsep.join(entry for entry in sys.path if entry)
    if memory_limit_mb is not None:
        # Each malloc arena reserves 64 MB of address space; few arenas, fewer surprises.
        env.setdefault("MALLOC_ARENA_MAX", "2")
    return env
