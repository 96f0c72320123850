"""What each API key spends through the gateways, added up in the store.

Each gateway counts its callers' calls in memory (`KeyUsage`, one per key) and adds
what it has counted to the store's total per key once a second (`UsageBook.run`),
when it stops, and before it answers ``GET /v1/usage`` (so a caller sees its own
calls at once). The store adds in the statement that writes (`legion.store.ledger`):
N gateways report one total per key. A gateway that dies unannounced loses at most
its last second of counts; counts the store refused are kept for the next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legion.errors import StoreError
from legion.llm.types import Usage
from legion.store.ledger import GatewayLedger, KeyTotals

log = logging.getLogger(__name__)


@dataclass(slots=True)
class KeyUsage:
    """One key's calls, tokens and cost counted by this gateway since it last added them
    to the store (``unpriced_calls``: calls whose cost is unknown; ``replayed``: calls
    answered from their record)."""

    calls: int = 0
    failed: int = 0
    replayed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0

    def add(self, usage: Usage, cost: float | None) -> None:
        """Count a call a provider answered."""
        self.calls += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd += cost

    def totals(self, key_id: str, now: float) -> KeyTotals:
        return KeyTotals(
            key_id,
            self.calls,
            self.failed,
            self.replayed,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_usd,
            self.unpriced_calls,
            now,
        )

    def merge(self, totals: KeyTotals) -> None:
        """Count ``totals`` again (counts the store did not take)."""
        self.calls += totals.calls
        self.failed += totals.failed
        self.replayed += totals.replayed
        self.prompt_tokens += totals.prompt_tokens
        self.completion_tokens += totals.completion_tokens
        self.cost_usd += totals.cost_usd
        self.unpriced_calls += totals.unpriced_calls


def totals_json(totals: KeyTotals) -> dict[str, Any]:
    """A key's total as ``GET /v1/usage`` answers it."""
    return {
        "calls": totals.calls,
        "failed": totals.failed,
        "replayed": totals.replayed,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "cost_usd": round(totals.cost_usd, 9),
        "cost_known": totals.cost_known,
    }


class UsageBook:
    """This gateway's counts per key, on their way to the store's totals."""

    def __init__(
        self, ledger: GatewayLedger, *, clock: Callable[[], float], interval: float = 1.0
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._interval = interval
        self._pending: dict[str, KeyUsage] = {}
        self._flushing = asyncio.Lock()

    def account(self, key_id: str) -> KeyUsage:
        """The counts of ``key_id`` not yet in the store (count into it)."""
        usage = self._pending.get(key_id)
        if usage is None:
            usage = self._pending[key_id] = KeyUsage()
        return usage

    async def flush(self) -> None:
        """Add what was counted to the store's totals; raises `StoreError` (the counts are
        kept for the next round) if the store refuses."""
        async with self._flushing:
            pending, self._pending = self._pending, {}
            now = self._clock()
            rows = [usage.totals(key, now) for key, usage in pending.items()]
            if rows:
                # Shielded: a caller that leaves (its handler cancelled) must not cut a
                # write that may commit anyway, whose counts would then be added twice.
                adding = asyncio.ensure_future(self._add(rows))
                adding.add_done_callback(_retrieved)
                await asyncio.shield(adding)

    async def _add(self, rows: list[KeyTotals]) -> None:
        try:
            await self._ledger.add_key_usage(rows)
        except BaseException:
            for row in rows:
                self.account(row.key_id).merge(row)
            raise

    async def totals(self, key_id: str) -> KeyTotals:
        """``key_id``'s total over every gateway, this one's latest calls included."""
        await self.flush()
        return await self._ledger.key_usage(key_id) or KeyTotals(key_id)

    async def run(self) -> None:
        """Flush once per interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except StoreError as exc:
                log.warning("legion gateway: usage not added to the store yet: %s", exc)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Take a shielded write's outcome (its counts are kept if it failed), so that one
    whose caller left is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()
