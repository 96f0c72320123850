"""The result feed: each finished task's result, delivered once to whoever waits for it.

A result comes from one of two sources: a completion the local worker committed (handed
over at once, `Delivery.committed`), or a change in the store's event feed made by
another process or the reaper (`Delivery.follow` reads the feed while anyone waits).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Sequence

from legion import codec
from legion.journal import Committed
from legion.store.base import TaskReader
from legion.task import TERMINAL_STATUSES, ErrorInfo, Submitted, TaskResult, TaskStatus

log = logging.getLogger("legion.runtime")

Deliver = Callable[[TaskResult], None]

# Finished task ids (not their results: outputs are read back from the store when asked)
# remembered for waiters that register late.
_RECENT = 100_000

_READ_PAGE = 5000
"""Tasks read at once where the results asked for stand."""

RECHECK_SECONDS = 10.0
"""How often the follower asks the store where every task it waits for stands, whatever
the feed said: a backstop for an end it cannot read (a task purged, with its change,
before the feed was read: the caller paused, or cut off from the store). Less often
with more waited for: a second more per `RECHECK_PER_SECOND` tasks."""

RECHECK_PER_SECOND = 10_000
"""(A SQLite store answers where 100,000 tasks stand in ~0.14 s: about 1 % of its time.)"""

GONE = ErrorInfo("Gone", "the task is no longer in the store (purged)")
"""The error of what is handed to a waiter for a task that is gone: `Delivery.results` and
`legion.Runtime.map` skip it (as a task that never existed), nobody else sees it."""


def gone(result: TaskResult) -> bool:
    """Whether ``result`` says its task is gone rather than how it ended."""
    return result.error is GONE


class Inbox:
    """Results handed over by `Delivery`, in the order they came, for one reader that
    takes them as they come (`legion.Runtime.map`): a deque and the reader's wait. (An
    `asyncio.Queue` did some eight calls of bookkeeping per result, for bounds and
    waiting writers that a reader of results never has.)"""

    __slots__ = ("__weakref__", "_failed", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[TaskResult] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failed: BaseException | None = None

    def put(self, result: TaskResult) -> None:
        self._items.append(result)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> TaskResult:
        """The oldest result (there must be one)."""
        return self._items.popleft()

    def fail(self, error: BaseException) -> None:
        """No more results will come: the reader's wait raises ``error`` (once it has
        taken the results already there)."""
        self._failed = error
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> TaskResult:
        """The oldest result, once there is one."""
        if not self._items:
            await self.wait()
        return self._items.popleft()

    async def wait(self) -> None:
        """Return once a result is there."""
        while not self._items:
            if self._failed is not None:
                raise self._failed
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None


class Delivery:
    """Who waits for which task, and the two sources that tell them it finished."""

    def __init__(self, store: TaskReader, *, local_worker: Callable[[], str | None]) -> None:
        """``local_worker``: the id of this process's worker, if it has one now (its own
        changes are handed over as it commits them, so the feed skips them)."""
        self._store = store
        self._local_worker = local_worker
        # Who waits for each task: one deliverer (most tasks), or a list of them.
        self._waiters: dict[int, Deliver | list[Deliver]] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        # Waited-for tasks to read from the store until their outcome is final: those of
        # `_dropped` below, and those whose read failed.
        self._recheck: set[int] = set()
        # Waited-for tasks whose attempt ended without ending them (a retry, a suspension, a
        # release): read once from the store by the follower, as the store ends such an
        # attempt cancelled when the task's cancel was asked meanwhile.
        self._read_once: set[int] = set()
        # Tasks whose lease the local worker lost (its completion refused, or the instance
        # stopped): whoever took the lease ends the task, and the feed names the local
        # worker on that change (the lease was its), which the follower skips. A waiter
        # that registers later, while such a task still reads as running, is rechecked.
        self._dropped: OrderedDict[int, None] = OrderedDict()
        self._has_waiters = asyncio.Event()
        self._cursor = 0
        # The readers waiting for results now, and why none will come (see `halt`).
        self._inboxes: weakref.WeakSet[Inbox] = weakref.WeakSet()
        self._halted: BaseException | None = None
        self._stopping = False

    def inbox(self) -> Inbox:
        """An inbox for one reader, failed at once if `halt` was called."""
        box = Inbox()
        if self._halted is not None:
            box.fail(self._halted)
        self._inboxes.add(box)
        return box

    def halt(self, error: BaseException) -> None:
        """The results awaited will not come (the local worker that runs them stopped):
        every reader, now and later, gets ``error`` once it has taken those already
        delivered."""
        self._halted = error
        for box in list(self._inboxes):
            box.fail(error)

    def stop(self) -> None:
        """End `follow` (the runtime closes): at its next turn, also if the cancel that
        goes with this was lost (asyncio.wait_for in psycopg's pool, on Python 3.11, can
        drop a cancel that comes as its wait ends: the follower then waited for readers
        for ever, and the runtime's close with it)."""
        self._stopping = True
        self._has_waiters.set()

    async def start(self) -> None:
        """Follow the feed from now on."""
        self._cursor = await self._store.last_event_id()

    async def results(
        self, ids: Sequence[int], unfinished: Callable[[set[str]], None] | None = None
    ) -> AsyncGenerator[TaskResult, None]:
        """Yield the results of these tasks as they finish (``unfinished``: told the
        agents of those not finished when they are first read)."""
        inbox = self.inbox()
        asked = set(ids)
        wanted = set(asked)

        def deliver(result: TaskResult) -> None:  # once per task, from either source
            if result.id in wanted:
                wanted.discard(result.id)
                inbox.put(result)

        # Wait for every task before reading where they stand: a task that finishes while
        # the read is on its way is then delivered by its completion, not missed (a local
        # worker's completions are not read back from the event feed).
        for task_id in asked:
            self._wait(task_id, deliver)
        self._has_waiters.set()
        try:
            # Read a page at a time, and hand over what is ready after each: the tasks of
            # a 400,000-line run read whole were 400 MB of records at once. ``left``: the
            # tasks whose result has not been taken (a result may come before its page is
            # read: a completion, or the follower's answer for a task that is gone).
            left = set(asked)
            order = list(asked)
            for lo in range(0, len(order), _READ_PAGE):
                page = order[lo : lo + _READ_PAGE]
                infos = await self._store.get_many(page)
                found = {info.id for info in infos}
                for task_id in set(page) - found:  # no such task: nothing to wait for
                    if task_id in wanted:  # (not delivered already)
                        self.unwatch(task_id, deliver)
                        wanted.discard(task_id)
                        left.discard(task_id)
                for info in infos:
                    if info.status in TERMINAL_STATUSES:
                        deliver(TaskResult.from_info(info))
                if unfinished is not None:
                    agents = {i.agent for i in infos if i.status not in TERMINAL_STATUSES}
                    if agents:
                        unfinished(agents)
                del infos
                while len(inbox):
                    result = inbox.take()
                    left.discard(result.id)
                    if not gone(result):  # (purged before its end was read: never there)
                        yield result
            while left:
                result = await inbox.get()
                left.discard(result.id)
                if not gone(result):
                    yield result
        finally:
            for task_id in asked:
                self.unwatch(task_id, deliver)

    async def watch(
        self,
        submitted: Sequence[Submitted],
        deliver: Deliver,
        watched: set[int],
        *,
        fresh: bool = True,
    ) -> None:
        """Deliver each task's result once it is final. ``fresh``: the statuses come from a
        submission just made, so a result remembered since then is this task's (a status
        read back from the store needs no such help, and a remembered result could be of
        an earlier run of a task queued again since)."""
        fetch = []
        for s in submitted:
            if s.status in TERMINAL_STATUSES:
                fetch.append(s.id)
                continue
            if fresh and s.id in self._recent:  # finished between submission and now
                fetch.append(s.id)
                continue
            self._wait(s.id, deliver)
            watched.add(s.id)
        if watched:
            self._has_waiters.set()
        if fetch:
            # (once per time it was submitted: two inputs with one key are two results)
            infos = {info.id: info for info in await self._store.get_many(list(set(fetch)))}
            for task_id in fetch:
                info = infos.get(task_id)
                if info is None:  # purged since: as `results` answers such a task
                    deliver(TaskResult(task_id, None, TaskStatus.DEAD, error=GONE))
                elif info.status in TERMINAL_STATUSES:
                    deliver(TaskResult.from_info(info))
                else:  # re-queued meanwhile
                    self._wait(info.id, deliver)
                    watched.add(info.id)

    def unwatch(self, task_id: int, deliver: Deliver) -> None:
        """``deliver`` no longer waits for ``task_id`` (however many times it did: a map
        of two inputs with one key waits twice)."""
        waiting = self._waiters.get(task_id)
        if isinstance(waiting, list):
            kept = [d for d in waiting if d != deliver]
            if not kept:
                del self._waiters[task_id]
            else:
                self._waiters[task_id] = kept[0] if len(kept) == 1 else kept
        elif waiting is not None and waiting == deliver:
            del self._waiters[task_id]

    def _wait(self, task_id: int, deliver: Deliver) -> None:
        """``deliver`` waits for ``task_id`` too (no list made for the first: a list per
        task waited for was ~10,000 objects for the collector to scan in a large map)."""
        waiting = self._waiters.get(task_id)
        if waiting is None:
            self._waiters[task_id] = deliver
        elif isinstance(waiting, list):
            waiting.append(deliver)
        else:
            self._waiters[task_id] = [waiting, deliver]

    def _deliver(self, task_id: int, result: TaskResult) -> None:
        """Hand ``result`` to whoever waits for ``task_id``, once."""
        waiting = self._waiters.pop(task_id, None)
        if isinstance(waiting, list):
            for deliver in waiting:
                deliver(result)
        elif waiting is not None:
            waiting(result)

    async def _check_all(self) -> None:
        """Ask the store where every task waited for stands: those that ended are read
        back with the next pass, those that are gone are handed over as `GONE`."""
        waited = list(self._waiters)
        try:
            found = await self._store.statuses(waited)
        except Exception as exc:  # the store is away: asked again at the next check
            log.error("checking the tasks waited for failed: %s", exc)
            return
        for task_id in waited:
            status = found.get(task_id)
            if status is None:
                if task_id in self._waiters:
                    log.warning(
                        "task %d is no longer in the store (purged before its end was "
                        "read): not waited for any more",
                        task_id,
                    )
                    self._deliver(task_id, TaskResult(task_id, None, TaskStatus.DEAD, error=GONE))
            elif status.terminal:
                self._recheck.add(task_id)

    def _remember(self, task_id: int) -> None:
        self._recent[task_id] = None
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    def lost(self, task_ids: Sequence[int]) -> None:
        """The local worker lost these tasks' leases and stopped them: no completion will
        come from it. Whoever took the lease back ends the task, and the feed names this
        worker on that change (the lease was its), so the follower, which skips this
        worker's own changes, would not see it: ask the store until they have ended."""
        for task_id in task_ids:
            self._drop(task_id)

    def _drop(self, task_id: int) -> None:
        self._dropped[task_id] = None
        if len(self._dropped) > _RECENT:
            self._dropped.popitem(last=False)
        if task_id in self._waiters:  # (the follower rechecks it: wake it now)
            self._has_waiters.set()

    def committed(self, batch: Sequence[Committed]) -> None:
        for c in batch:
            status = c.completion.outcome.status
            if not c.applied:
                self._drop(c.completion.id)
                continue
            if not status.terminal:  # back to the queue: not a result yet, unless cancelled
                if c.completion.id in self._waiters:
                    self._read_once.add(c.completion.id)
                continue
            comp = c.completion
            result = TaskResult(  # (positional: one per finished task)
                comp.id,
                c.lease.key,
                status,
                codec.loads(comp.output) if comp.output is not None else None,
                comp.error,
                comp.attempt,
                comp.started_at,
                comp.finished_at,
                codec.loads(comp.usage) if comp.usage is not None else None,
                comp.diagnostics,
            )
            self._remember(comp.id)
            if self._dropped:  # (ended here after all, on a later lease)
                self._dropped.pop(comp.id, None)
            self._deliver(comp.id, result)

    async def follow(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        """Deliver results of tasks that finished in other processes (or were reclaimed)."""
        quiet = 0.05
        rechecked = monotonic()
        while not self._stopping:
            if not self._waiters:
                self._has_waiters.clear()
                await self._has_waiters.wait()
                rechecked = monotonic()
                if self._stopping:
                    return
            every = max(RECHECK_SECONDS, len(self._waiters) / RECHECK_PER_SECOND)
            if monotonic() - rechecked >= every:
                rechecked = monotonic()
                await self._check_all()
            mine = self._local_worker()
            limit = 10_000
            try:
                newest = await self._store.last_event_id()
                events = await self._store.events_after(self._cursor, limit, skip_worker=mine)
            except Exception as exc:
                log.error("reading the event feed failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            finished = []
            if len(events) < limit:  # all we did not skip is here: the feed is read up to newest
                self._cursor = max(self._cursor, newest)
            for e in events:
                self._cursor = max(self._cursor, e.id)
                if e.status.terminal:
                    self._remember(e.task_id)
                    if e.task_id in self._waiters:
                        finished.append(e.task_id)
            # Tasks whose lease this process lost: the change that ended them may be one
            # the feed skips (this worker's reaper took them back), so ask the store.
            self._recheck |= self._dropped.keys() & self._waiters.keys()
            self._recheck &= self._waiters.keys()
            once, self._read_once = self._read_once & self._waiters.keys(), set()
            if self._recheck or once:
                finished.extend((self._recheck | once) - set(finished))
            if finished:
                try:
                    infos = await self._store.get_many(finished)
                except Exception as exc:  # the store is away: these are asked again next
                    log.error("reading finished tasks failed: %s", exc)
                    self._recheck.update(finished)
                    await asyncio.sleep(1.0)
                    continue
                for info in infos:
                    if not info.status.terminal:
                        continue
                    self._recheck.discard(info.id)
                    self._dropped.pop(info.id, None)
                    self._deliver(info.id, TaskResult.from_info(info))
            if events:
                quiet = 0.05
            else:
                # With a local worker most results arrive directly; the feed is a backstop.
                ceiling = 1.0 if mine is not None else 0.25
                quiet = min(quiet * 2, ceiling)
            await asyncio.sleep(quiet if len(events) < limit else 0)
