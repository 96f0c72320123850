"""Load shedding: what the server takes on, and what it answers 429 or 503 at once.

- **Requests in progress** (`InProgressLimit`): at most `AdaptiveLimit`'s ``limit``
  requests are handled at once; one more is answered ``503`` with ``Retry-After`` before
  its body is read. Event streams (long-lived by design) and ``/healthz`` are not counted.
  A server that sheds early keeps the latency of what it accepts bounded, instead of
  queueing every request behind all the others. Under overload most requests are
  refused, so a refusal must cost little: ``legion serve`` consults the bound as soon as a
  request's headers are parsed and writes a prepared answer to the socket
  (`legion.server.protocol`); the application consults it first too, before FastAPI's
  middleware and routing, for what reaches it otherwise.

  A fixed bound does not do that by itself: what the requests in progress wait for is the
  store's writer, so by Little's law each one takes about ``in progress / throughput``.
  128 requests in progress on a store that writes 300 submissions a second is 0.4 s each,
  and far more once the server's CPU also answers the shed ones. So the bound adapts to
  the throughput the server gives (`AdaptiveLimit`): about as many requests as
  finish in ``target_latency`` seconds are taken on, never more than ``max_in_progress``,
  while requests queue for the store (it says how long its calls waited); a server slow
  for another reason keeps its bound.
- **Per tenant** (`TenantLimits`): a submit rate (a token bucket of ``rate`` tasks
  per second, ``burst`` deep) and a most of queued tasks. Over either, ``429`` with
  ``Retry-After``. A refused submission stored nothing; an acknowledged one is in the
  store (durable) before it is answered.

Both answer ``{"detail": "..."}`` saying which limit was hit; a batch larger than a
tenant may ever have queued is a ``422`` whose ``detail`` is a list of errors, as every
422's is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from legion import codec


class Shed(Exception):
    """A request refused to protect the server or the other tenants: ``status`` 429 (the
    tenant is over its limit) or 503 (the server is saturated)."""

    def __init__(self, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # (None: no wait would do; no Retry-After)

    def response(self) -> JSONResponse:
        after = self.retry_after
        # A 422 says what is wrong with the request, in the shape of every other 422.
        detail: Any = (
            [{"type": "too_many", "loc": ["body", "tasks"], "msg": self.message}]
            if self.status == 422
            else self.message
        )
        return JSONResponse(
            {"detail": detail},
            status_code=self.status,
            headers={} if after is None else {"Retry-After": str(max(1, math.ceil(after)))},
        )


ADMITTED = "legion.admitted"
"""A request's scope key: when the protocol (`legion.server.protocol`) admitted it, which
counted it in progress already."""


_PROBES = frozenset({"/healthz", "/livez"})


def unbounded(path: str) -> bool:
    """Routes left out of the in-progress bound: event streams and the health checks."""
    return path in _PROBES or path == "/v1/progress" or path.endswith("/events")


class AdaptiveLimit:
    """The bound on requests in progress, from the rate at which they finish.

    By Little's law a request waits about ``in progress / throughput``; to keep that near
    ``target`` seconds the bound is ``throughput * target``, where the throughput is the
    rate at which admitted requests finished over the last ``window`` seconds (smoothed
    over windows), kept between ``floor`` and ``ceiling``. It is measured only while the
    bound was reached (a request was refused, or took the last place) or the requests
    queued inside the server (they took longer than ``target`` on average, more than
    ``floor`` of them in progress on average): otherwise the rate is only what clients
    asked for, and a burst on an idle server must not be refused for that. (Without the
    second, a bound above what the clients send would never shed, whatever their
    latency.) A window that did neither doubles the bound back towards the ceiling, where
    it starts.
    ``target=None``: the bound stays at the ceiling.

    The bound follows what the server completes, not how slow each request was: when the
    whole process is slow (its CPU shared), cutting the bound further would not make the
    admitted requests faster, only fewer, and the throughput measured next would fall
    with it. So a cut after which the requests took as long as before (within 10 %, and
    still longer than the target) is undone: under a 10x overload that the event loop
    spends reading and refusing, the bound cut by the rate alone fell to the floor, and
    the server admitted 46 requests a second of the 1,600 it sustains.

    ``queue_delay`` (the store's `legion.store.base.TaskQueue.queue_delay`) says
    whether requests queue where the bound can help: the mean time the window's calls
    to the store waited before it began them (for its writer, or a connection). When it
    answers, it decides: a wait over half the target cuts the bound as above; a shorter
    one means the requests' time went elsewhere (the event loop reading and refusing the
    excess, a CPU shared with other work), and the bound grows back towards the
    ceiling, as in a window that never reached it. Judged by the requests' time alone,
    the bound still sank under a 10x overload of a server whose store was idle, to a
    tenth of the rate it sustains; it now sheds only what the store could not take.
    """

    def __init__(
        self,
        *,
        ceiling: int,
        target: float | None,
        floor: int = 8,
        window: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        queue_delay: Callable[[], float | None] | None = None,
    ) -> None:
        self.ceiling = ceiling
        self.floor = max(1, min(floor, ceiling))
        self.target = target
        self.window = window
        self._clock = clock
        self._queue_delay = queue_delay
        self._bound = float(ceiling)
        self._rate: float | None = None
        self._started = clock()
        self._count = 0
        self._busy = 0.0  # seconds the requests finished in this window took, summed
        self._reached = False
        # The bound before the last cut, and the requests' mean time then (see finished).
        self._cut_from: float | None = None
        self._latency_before_cut = 0.0

    @property
    def limit(self) -> int:
        return max(self.floor, min(self.ceiling, int(self._bound)))

    def reached(self) -> None:
        """A request found the bound reached: it was refused, or took the last place."""
        self._reached = True

    def finished(self, seconds: float = 0.0) -> None:
        """An admitted request finished, ``seconds`` after it was admitted."""
        if self.target is None:
            return
        self._count += 1
        self._busy += seconds
        now = self._clock()
        elapsed = now - self._started
        if elapsed < self.window:
            return
        # Queueing inside: slower than the target on average with more requests in
        # progress on average (by Little's law, the time they took over the window's
        # length) than the floor; one slow request at a time is no queue.
        queueing = self._busy > self.target * self._count and self._busy > self.floor * elapsed
        waited = self._queue_delay() if self._queue_delay is not None else None
        if waited is not None and (self._reached or queueing):
            # Measured where requests queue: the bound helps only if they wait there.
            self._reached = queueing = waited > self.target / 2
            self._cut_from = None
        if self._reached or queueing:
            rate = self._count / elapsed
            self._rate = rate if self._rate is None else (self._rate + rate) / 2
            bound = self._rate * self.target
            latency = self._busy / self._count
            if (
                self._cut_from is not None
                and latency > self.target
                and latency >= 0.9 * self._latency_before_cut
            ):
                # The last cut did not make requests faster: their time is not spent
                # queueing behind each other (the whole process is slow: reading and
                # refusing the excess, a busy machine). Cutting further would only admit
                # fewer, and the rate measured next would fall with them, down to the
                # floor: back to the bound before that cut.
                bound, self._cut_from, self._rate = self._cut_from, None, None
            elif bound < self._bound:
                self._cut_from, self._latency_before_cut = self._bound, latency
            else:
                self._cut_from = None
            self._bound = bound
        else:
            self._rate = None
            self._cut_from = None
            self._bound = min(float(self.ceiling), 2 * max(self._bound, float(self.floor)))
        self._started, self._count, self._busy, self._reached = now, 0, 0.0, False


class InProgressLimit:
    """ASGI middleware: at most ``limit`` requests in progress (adapted to
    ``target_latency``, see `AdaptiveLimit`); one more gets 503."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        target_latency: float | None = None,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        queue_delay: Callable[[], float | None] | None = None,
    ) -> None:
        self.app = app
        self.bound = AdaptiveLimit(
            ceiling=limit, target=target_latency, clock=clock, queue_delay=queue_delay
        )
        self._clock = clock
        self.retry_after = retry_after
        self.in_progress = 0
        self.shed = 0
        self.retry_after_header = str(max(1, math.ceil(retry_after))).encode()
        self._bodies: dict[int, bytes] = {}

    @property
    def limit(self) -> int:
        return self.bound.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or unbounded(scope["path"]):
            await self.app(scope, receive, send)
            return
        admitted = scope.get(ADMITTED)
        if admitted is None:
            if self.full():
                await self._refuse(send)
                return
            admitted = self.admit()
        try:
            await self.app(scope, receive, send)
        finally:
            self.release(admitted)

    def full(self) -> bool:
        """Whether a request arriving now would be refused."""
        return self.in_progress >= self.bound.limit

    def admit(self) -> float:
        """Count a request in progress; answer when (for `release`)."""
        self.in_progress += 1
        if self.in_progress >= self.bound.limit:
            self.bound.reached()
        return self._clock()

    def release(self, admitted: float) -> None:
        """A request `admit` counted at ``admitted`` has finished."""
        self.in_progress -= 1
        self.bound.finished(self._clock() - admitted)

    async def _refuse(self, send: Send) -> None:
        _, body = self.refuse()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", self.retry_after_header),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def refuse(self) -> tuple[int, bytes]:
        """Count a request refused; answer the bound and the 503's JSON body. The answer is
        written without routing, middleware or a response object (under overload most
        requests are refused, and what each costs is taken from the admitted ones)."""
        self.shed += 1
        self.bound.reached()
        limit = self.bound.limit
        body = self._bodies.get(limit)
        if body is None:
            message = f"the server is saturated ({limit} requests in progress); try again later"
            body = self._bodies[limit] = codec.dumps({"detail": message})
        return limit, body


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
    ``refresh`` seconds and counted locally in between. The tasks of a submission admitted
    and not yet stored count as queued from its admission on (`admit` reserves them,
    `queued` or `release` ends the reservation): submissions in flight together, whose
    store writes commit as one, must not each see room for themselves alone.
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
        self._reserved: dict[str, int] = {}  # admitted, not yet stored
        self._added: dict[str, int] = {}  # stored, counted here (all told)

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
        """Take ``tasks`` new tasks of ``tenant`` on, or refuse them (429); taken on, they
        are reserved until `queued` (stored) or `release` (not)."""
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
            if tasks > self.max_queued:  # (a 429 would be sent again, and again refused)
                raise Shed(
                    422,
                    f"a batch of {tasks} tasks is more than tenant {tenant!r} may have "
                    f"queued (its limit is {self.max_queued}, --tenant-max-queued): send at "
                    f"most {self.max_queued} per request",
                    None,
                )
            # (From the store's count on, nothing awaits: the check and the reservation
            # are one step for every submission in flight.)
            queued = await self._queued(tenant) + self._reserved.get(tenant, 0)
            if queued + tasks > self.max_queued:
                more = "" if tasks == 1 else f" (this request adds {tasks})"
                raise Shed(
                    429,
                    f"tenant {tenant!r} has {queued} queued tasks{more}; its limit is "
                    f"{self.max_queued}",
                    1.0,
                )
            self._reserved[tenant] = self._reserved.get(tenant, 0) + tasks
        if self.rate is not None:
            self._buckets[tenant].tokens -= tasks

    def queued(self, tenant: str, created: int, reserved: int) -> None:
        """``reserved`` tasks admitted for ``tenant`` were stored, ``created`` of them new
        (the others were there already, under their idempotency keys): counted as queued
        until the next store read."""
        self.release(tenant, reserved)
        backlog = self._backlogs.get(tenant)
        if backlog is not None:
            backlog.queued += created
        if self.max_queued is not None:
            self._added[tenant] = self._added.get(tenant, 0) + created

    def release(self, tenant: str, reserved: int) -> None:
        """End the reservation of ``reserved`` tasks admitted for ``tenant``."""
        if self.max_queued is None:
            return
        left = self._reserved.get(tenant, 0) - reserved
        if left > 0:
            self._reserved[tenant] = left
        else:
            self._reserved.pop(tenant, None)

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
            before = self._added.get(tenant, 0)
            counted = await self._count_queued(tenant)
            # A submission stored while the count was out may be in it or not: counted
            # on top (too many for a moment, never too few).
            meanwhile = self._added.get(tenant, 0) - before
            backlog = self._backlogs[tenant] = _Backlog(counted + meanwhile, now)
        return backlog.queued
