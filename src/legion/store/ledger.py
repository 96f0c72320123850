"""The store's part of ``legion gateway``: usage per API key and recorded calls.

Every gateway on one store adds what its callers used to one total per key
(`GatewayLedger.add_key_usage`), so N gateways report one sum. Calls made with an
``X-Legion-Task`` header are recorded per key, task and step: the first answer
recorded for a step stays, and a call of that step made again (the caller's task run
again, on any gateway) gets it back instead of a new provider call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class KeyTotals:
    """One API key's usage through the gateways: as a total read back, or as what one
    gateway adds to it (then ``updated_at`` is when)."""

    key_id: str
    calls: int = 0
    """Calls answered by a provider."""
    failed: int = 0
    replayed: int = 0
    """Calls answered from their record: they bought nothing."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    """The cost of the priced calls (see ``unpriced_calls``)."""
    unpriced_calls: int = 0
    """Calls on a model without a price: their cost is unknown, and not in ``cost_usd``."""
    updated_at: float = 0.0

    @property
    def cost_known(self) -> bool:
        return not self.unpriced_calls


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """The answer recorded for one step of a caller's task, and a digest of the request
    it answered (the same step asked with another request is a conflict)."""

    request: str
    output: bytes


class GatewayLedger(Protocol):
    """What ``legion gateway`` keeps in the store. All methods are safe to call
    concurrently, from any number of gateways."""

    async def add_key_usage(self, usage: Sequence[KeyTotals]) -> None:
        """Add each key's counts to its total (one transaction)."""

    async def key_usage(self, key_id: str) -> KeyTotals | None:
        """One key's total; ``None`` if it has used nothing yet."""

    async def key_usages(self) -> list[KeyTotals]:
        """Every key's total, by key id."""

    async def gateway_call(self, key_id: str, task: str, step: str) -> RecordedCall | None:
        """The answer recorded for ``step`` of ``key_id``'s ``task``, if any."""

    async def record_gateway_call(
        self, key_id: str, task: str, step: str, call: RecordedCall, now: float
    ) -> RecordedCall:
        """Record ``call`` unless the step has an answer already; answer the one that
        stays (``call``, or the one recorded first by a concurrent caller)."""

    async def gateway_tasks(self, key_id: str, limit: int = 100) -> dict[str, int]:
        """The number of calls recorded per task of ``key_id``, for its ``limit`` tasks
        called last."""


def totals_params(totals: KeyTotals) -> dict[str, Any]:
    """The parameters of the ``add_key_usage`` query for ``totals``."""
    return {
        "key_id": totals.key_id,
        "calls": totals.calls,
        "failed": totals.failed,
        "replayed": totals.replayed,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "cost_usd": totals.cost_usd,
        "unpriced_calls": totals.unpriced_calls,
        "now": totals.updated_at,
    }
