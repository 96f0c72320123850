"""Group commit: the writes of many agent instances, committed together.

Instances hand their step results, memory writes and completions to the
:class:`Journal`; one flusher commits whatever has accumulated in one store
transaction, then wakes the instances that wait for durability. While a commit is in
flight the next batch fills up, so batches grow exactly when load does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import codec
from .clock import Clock
from .store.base import DiagnosticRecord, MemoryWrite, Store, WriteBatch
from .task import Completion, Lease, StepRecord

log = logging.getLogger("legion.journal")

CompletionCallback = Callable[[Sequence["Committed"]], None]


@dataclass(frozen=True, slots=True)
class Committed:
    """A completion after its commit; ``applied`` is false when the lease had been lost."""

    lease: Lease
    completion: Completion
    applied: bool


class Journal:
    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        on_committed: CompletionCallback,
        max_retry_delay: float = 5.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_committed = on_committed
        self._max_retry_delay = max_retry_delay
        self._batch = WriteBatch()
        self._waiters: list[asyncio.Future[None]] = []
        self._leases: list[Lease] = []
        self._pending = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.commits = 0
        self.rows = 0

    def record_step(self, step: StepRecord) -> asyncio.Future[None]:
        """Queue a step result; the future resolves once it is durable."""
        self._batch.steps.append(step)
        return self._wait()

    def write_memory(self, write: MemoryWrite) -> asyncio.Future[None]:
        """Queue a memory write; the future resolves once it is durable."""
        self._batch.memory.append(write)
        return self._wait()

    def complete(self, lease: Lease, completion: Completion) -> None:
        """Queue the end of an attempt; ``on_committed`` reports it after the commit."""
        self._batch.completions.append(completion)
        self._leases.append(lease)
        for d in completion.diagnostics:
            self._batch.diagnostics.append(
                DiagnosticRecord(
                    completion.id,
                    completion.attempt,
                    lease.agent,
                    str(d.kind),
                    codec.dumps(d.to_json()),
                )
            )
        self._kick()

    def _wait(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._kick()
        return fut

    def _kick(self) -> None:
        self._idle.clear()
        self._pending.set()

    async def wait_flushed(self) -> None:
        """Return once everything queued so far is committed."""
        await self._idle.wait()

    def close(self) -> None:
        """Ask :meth:`run` to return once everything queued is committed."""
        self._closing = True
        self._pending.set()

    async def run(self) -> None:
        """Commit batches until :meth:`close`; a batch being written is never abandoned."""
        while True:
            if not len(self._batch):
                if self._closing:
                    return
                # Nothing queued: sleep until a write or close() comes. (Checked and
                # cleared in one step of the loop, so no wake-up can slip in between.)
                self._pending.clear()
                await self._pending.wait()
                continue
            await asyncio.shield(self._flush_task())

    def _flush_task(self) -> asyncio.Task[None]:
        # The flush is its own task so that cancelling run() cannot cut a commit in half:
        # the batch still lands and its waiters and callbacks still fire.
        return asyncio.get_running_loop().create_task(self._flush(), name="legion-journal-flush")

    async def _flush(self) -> None:
        batch, self._batch = self._batch, WriteBatch()
        waiters, self._waiters = self._waiters, []
        leases, self._leases = self._leases, []
        if len(batch):
            applied = await self._commit(batch)
            self.commits += 1
            self.rows += len(batch)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            if batch.completions:
                self._on_committed(
                    [
                        Committed(lease, c, ok)
                        for lease, c, ok in zip(leases, batch.completions, applied, strict=True)
                    ]
                )
        if not len(self._batch):
            self._idle.set()

    async def _commit(self, batch: WriteBatch) -> list[bool]:
        delay = 0.05
        while True:
            try:
                return await self._store.write(batch, self._clock())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down or locked: keep the batch, try again
                log.error(
                    "store write of %d rows failed (%s); retrying in %.2fs", len(batch), exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
