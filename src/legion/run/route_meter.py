"""What a worker reports of its LLM routes in its heartbeat, for the scaling policy.

Per route budget (one provider endpoint and model, keyed as on the shared capacity
board): the requests and tokens per minute this worker spent over the last ``window``
seconds (5), the route's limit (learned from the provider's headers, else configured),
the calls queued for their turn, whether a 429 pause is in force and the 429s answered
over the window (a provider that sends no rate-limit headers tells its limit no other
way, and its pauses are short: between them the route looked free). Summed over the
workers, these say how close each route is to its limit (see
`legion.provision.board.route_headroom`).

A route's rates count from the first report in which it had made calls, not from the
worker's start: a worker still importing its app and leasing its first tasks would
otherwise report a route it is about to fill as half idle, and the scaling policy would
add a worker that only meets the limit. The meter is `measured` (the policy waits for it
before scaling up) once its routes have been rated over ``MIN_SPAN`` seconds of use, or
after a whole ``window`` in which no route made a call (a worker whose agents use none).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from legion.llm.client import LLMClient

MIN_SPAN = 0.3  # seconds: rates over a shorter span are noise


class RouteMeter:
    """Turns a client's counters into per-minute rates over a sliding window."""

    def __init__(
        self,
        client: LLMClient,
        *,
        window: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._window = window
        self._clock = clock
        # (at, requests, tokens, 429s)
        self._samples: dict[str, deque[tuple[float, int, int, int]]] = {}
        self._started = clock()
        self._used_since: float | None = None  # the first report in which a route had calls
        self.measured = False  # the rates reported say how the routes are used (see above)
        self.report()

    def report(self) -> dict[str, dict[str, Any]]:
        from legion.run.shares import _key

        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        seen: set[int] = set()
        for route in self._client.routes.values():
            if id(route.capacity) in seen:
                continue
            seen.add(id(route.capacity))
            key = _key(route)
            s = route.capacity.statistics()
            samples = self._samples.setdefault(key, deque())
            used = s.requests > 0 or s.tokens_used > 0
            if used and samples and samples[0][1] == 0 and samples[0][2] == 0:
                samples.clear()  # its first calls: rates count from this report on
            samples.append((now, s.requests, s.tokens_used, s.rate_limited))
            while len(samples) > 2 and samples[1][0] <= now - self._window:
                samples.popleft()
            if used and self._used_since is None:
                self._used_since = now
            at, requests, tokens, limited = samples[0]
            span = now - at
            rpm = (s.requests - requests) * 60.0 / span if span > 0 else 0.0
            tpm = (s.tokens_used - tokens) * 60.0 / span if span > 0 else 0.0
            out[key] = {
                "name": route.name,
                "rpm": round(rpm, 1),
                "tpm": round(tpm, 1),
                "rpm_limit": s.learned_rpm or s.limit_rpm,
                "tpm_limit": s.learned_tpm or s.limit_tpm,
                "waiting": s.waiting,
                "paused": s.paused_for > 0,
                "limited": s.rate_limited - limited,
            }
        if self._used_since is not None:
            self.measured = self.measured or now - self._used_since >= MIN_SPAN
        else:
            self.measured = self.measured or now - self._started >= self._window
        return out
