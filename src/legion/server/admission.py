"""Load shedding: what the server takes on, and what it answers 429 or 503 at once.

- **Requests in progress** (`InProgressLimit`, ASGI middleware): at most
  ``max_in_progress`` requests are handled at once; one more is answered ``503`` with
  ``Retry-After`` before its body is read. Event streams (long-lived by design) and
  ``/healthz`` are not counted. A server that sheds early keeps the latency of what it
  accepts bounded, instead of queueing every request behind all the others.
- **Per tenant** (`TenantLimits`): a submit rate (a token bucket of ``rate`` tasks
  per second, ``burst`` deep) and a most of queued tasks. Over either, ``429`` with
  ``Retry-After``. A refused submission stored nothing; an acknowledged one is in the
  store (durable) before it is answered.

Both answer ``{"detail": "..."}`` saying which limit was hit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class Shed(Exception):
    """A request refused to protect the server or the other tenants: ``status`` 429 (the
    tenant is over its limit) or 503 (the server is saturated)."""

    def __init__(self, status: int, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"detail": self.message},
            status_code=self.status,
            headers={"Retry-After": str(max(1, math.ceil(self.retry_after)))},
        )


def _unbounded(path: str) -> bool:
    """Routes left out of the in-progress bound: event streams and the health check."""
    return path == "/healthz" or path == "/v1/progress" or path.endswith("/events")


class InProgressLimit:
    """ASGI middleware: at most ``limit`` requests in progress; one more gets 503."""

    def __init__(self, app: ASGIApp, *, limit: int, retry_after: float = 1.0) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = retry_after
        self.in_progress = 0
        self.shed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _unbounded(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            self.shed += 1
            refused = Shed(
                503,
                f"the server is saturated ({self.limit} requests in progress); try again later",
                self.retry_after,
            )
            await refused.response()(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class _Backlog:
    queued: int
    read_at: float


class TenantLimits:
    """Per-tenant submit rate and backlog.

    ``rate``: tasks per second a tenant may submit (``None``: unlimited), with bursts of up
    to ``burst`` tasks; a batch larger than the bucket is taken when the bucket is full
    (it then refills from below zero, so the long-run rate holds). ``max_queued``: most
    queued tasks per tenant (``None``: unlimited), read from the store at most every
    ``refresh`` seconds and counted locally in between.
    """

    def __init__(
        self,
        *,
        rate: float | None,
        burst: float | None,
        max_queued: int | None,
        count_queued: Callable[[str], Awaitable[int]],
        refresh: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate or 1.0)
        self.max_queued = max_queued
        self._count_queued = count_queued
        self._refresh = refresh
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._backlogs: dict[str, _Backlog] = {}

    def check_rate(self, tenant: str) -> None:
        """Refuse (429) a submission of ``tenant`` while its bucket is empty."""
        if self.rate is None:
            return
        bucket = self._bucket(tenant)
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise Shed(
                429,
                f"tenant {tenant!r} is over its submit rate ({self.rate:g} tasks/s)",
                wait,
            )

    async def admit(self, tenant: str, tasks: int) -> None:
        """Take ``tasks`` new tasks of ``tenant`` on, or refuse them (429)."""
        if self.rate is not None:
            bucket = self._bucket(tenant)
            if bucket.tokens < min(tasks, self.burst):
                wait = (min(tasks, self.burst) - bucket.tokens) / self.rate
                raise Shed(
                    429,
                    f"tenant {tenant!r} is over its submit rate ({self.rate:g} tasks/s)",
                    wait,
                )
        if self.max_queued is not None:
            queued = await self._queued(tenant)
            if queued + tasks > self.max_queued:
                raise Shed(
                    429,
                    f"tenant {tenant!r} has {queued} queued tasks; its limit is {self.max_queued}",
                    1.0,
                )
        if self.rate is not None:
            self._buckets[tenant].tokens -= tasks

    def queued(self, tenant: str, created: int) -> None:
        """Count ``created`` tasks just queued for ``tenant`` until the next store read."""
        backlog = self._backlogs.get(tenant)
        if backlog is not None:
            backlog.queued += created

    def _bucket(self, tenant: str) -> _Bucket:
        assert self.rate is not None
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        return bucket

    async def _queued(self, tenant: str) -> int:
        now = self._clock()
        backlog = self._backlogs.get(tenant)
        if backlog is None or now - backlog.read_at >= self._refresh:
            backlog = self._backlogs[tenant] = _Backlog(await self._count_queued(tenant), now)
        return backlog.queued
