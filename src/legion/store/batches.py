"""The store's part of the batch tier: LLM calls waiting to go out in a provider's batch.

A call made with ``tier="batch"`` (see `legion.waiting.batch`) is kept here while its task
waits for the signal that brings its answer. A worker's batch desk claims the pending
calls of a route (``pending`` → ``claimed``), submits them as one provider job and marks
them ``sent`` with the job's id; the desk that claims a job's next poll asks the provider,
signals each task its answer, then deletes the rows. A call whose task gave up on the
batch (its deadline came) is deleted too, whatever its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BatchCall:
    """One LLM call waiting for a batch: ``event`` is the signal that answers it,
    ``request`` its JSON (``{"messages": [...], "params": {...}}``), ``job`` the provider's
    batch once sent."""

    task_id: int
    event: str
    route: str
    request: bytes
    fallback_at: float
    job: str | None = None
    state: str = "pending"  # pending, claimed, sent, or dropped (given up once sent)


class BatchStore(Protocol):
    """The batch part of `legion.store.base.Store`."""

    async def batch_enqueue(self, call: BatchCall, now: float) -> None:
        """Keep a call for the next batch of its route (a second call of the same task and
        event changes nothing)."""

    async def batch_claim(
        self, route: str, limit: int, claim: str, now: float, stale: float
    ) -> list[BatchCall]:
        """Mark up to ``limit`` calls of ``route`` as claimed by ``claim``, oldest first,
        and answer them: the pending ones whose fallback time is still ahead, and those
        claimed at or before ``stale`` but never sent (their desk died)."""

    async def batch_sent(self, claim: str, job: str, poll_at: float) -> None:
        """The calls claimed by ``claim`` went out as the provider's batch ``job``; poll it
        from ``poll_at``."""

    async def batch_due(self, now: float, next_poll: float) -> list[BatchCall]:
        """Claim the poll of every sent (or dropped) call whose poll is due (moved to
        ``next_poll``, so one desk polls a job at a time) and answer them, with their
        jobs."""

    async def batch_deliver(
        self, answers: Sequence[tuple[int, str, bytes | None]], now: float
    ) -> None:
        """Send each call's task the signal ``event`` with ``data`` (``(task_id, event,
        data)``; none when ``data`` is ``None``, nor to a task that ended), delete the
        calls, and queue again the tasks whose wait is over, in one transaction: a task
        sees every answer of a job at once, and an answer is delivered once."""

    async def batch_forget(self, calls: list[tuple[int, str]]) -> None:
        """Give up the calls ``(task_id, event)``: deleted if not sent yet, else marked
        ``dropped`` (their job's desk cancels a job whose calls were all dropped)."""
