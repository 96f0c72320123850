"""LLM capacity shared by every worker that uses the same API key, through the store.

Each worker's `legion.llm.capacity.Capacity` paces calls on its own; when N
workers share one key, N such limiters would together send N times the limit. So once
a second each worker *claims* its demand on every limited route in the store (one
round trip per route per second, not per call) and reads all live claims back; it then
paces at its share of the limit::

    share = (my demand + 1) / (sum of all demands + number of claimants)

Shares add up to one, so the workers together stay under the limit, and they follow
demand (smoothed over a few rounds, so shares do not swing with every burst): a worker
with nothing to do keeps a sliver, a busy one takes the rest. Real
token usage is what drives demand for a TPM limit (the local capacity settles each call
with its real usage). Claims older than three periods are ignored: a worker that died
stops counting within seconds.

A 429 seen by one worker is published with its pause; every worker reads it at its next
claim and pauses and slows down as if it had got the 429 itself (multiplicative
decrease), so one rejection tightens all of them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from legion.clock import Clock, system_clock
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.store.base import CapacityBoard

log = logging.getLogger("legion.llm.shared")


@dataclass(slots=True)
class _Seen:
    started: int = 0
    rate_limited: int = 0
    backoff_applied: float = 0.0
    demand: float = 0.0


class SharedCapacity:
    """Keeps one worker's share of every limited route up to date."""

    def __init__(
        self,
        client: LLMClient,
        store: CapacityBoard,
        worker_id: str,
        *,
        clock: Clock = system_clock,
        period: float = 1.0,
    ) -> None:
        self._client = client
        self._store = store
        self._worker = worker_id
        self._clock = clock
        self._period = period
        self._seen: dict[str, _Seen] = {}

    async def run(self) -> None:
        """Claim and adjust every ``period`` seconds until cancelled."""
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: keep the last shares
                log.warning("could not share LLM capacity through the store: %s", exc)
            await self._clock.sleep(self._period)

    async def sync(self) -> None:
        """One round: publish 429s seen here, claim demand, apply shares and pauses."""
        for key, capacity in self._limited():
            seen = self._seen.setdefault(key, _Seen(started=capacity.demand()[0]))
            now = self._clock.wall()
            stats = capacity.statistics()
            if stats.rate_limited > seen.rate_limited and stats.paused_for > 0:
                await self._store.signal_backoff(key, now + stats.paused_for)
                seen.backoff_applied = max(seen.backoff_applied, now + stats.paused_for)
            seen.rate_limited = stats.rate_limited
            started, active = capacity.demand()
            # Demand: calls waiting or in flight now, plus those started since the last
            # round, smoothed so that shares do not swing with every burst.
            now_demand = float(active + max(0, started - seen.started))
            seen.started = started
            seen.demand += (now_demand - seen.demand) * 0.5
            demand = seen.demand
            claims = await self._store.claim_capacity(
                key, self._worker, demand, now, horizon=3 * self._period
            )
            total = claims.total_demand + claims.claimants
            capacity.set_share((demand + 1.0) / total if total > 0 else 1.0)
            if claims.backoff_until > max(now, seen.backoff_applied):
                # Another worker got a 429: pause and slow down here too.
                seen.backoff_applied = claims.backoff_until
                capacity.rate_limited(claims.backoff_until - now, relayed=True)

    def _limited(self) -> list[tuple[str, Capacity]]:
        found: dict[int, tuple[str, Capacity]] = {}
        for route in self._client.deployments:
            stats = route.capacity.statistics()
            limited = stats.limit_rpm or stats.limit_tpm or stats.learned_rpm or stats.learned_tpm
            if limited and id(route.capacity) not in found:
                found[id(route.capacity)] = (_key(route), route.capacity)
        return list(found.values())


def _key(route: Route) -> str:
    """Routes of one provider endpoint and model share one budget (one per API key for
    the deployments of a pool). The endpoint is the provider's ``base_url`` (two servers
    of one model, two regions, have two limits: without it, they split one)."""
    where = getattr(route.provider, "base_url", "")
    key = f"{route.provider.name}|{where}|{route.model}"
    return f"{key}|{route.key_id}" if route.key_id else key  # a pool: one budget per key
