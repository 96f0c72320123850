"""A provider wrapper that records every attempt: when it started and ended, how it
ended, and what it was charged against the provider's token limit.

Benchmarks wrap the same provider this way for legion and for the baseline clients, so
both are measured by one yardstick, on the client side of the wire.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from legion.errors import ProviderError, RateLimited
from legion.llm.provider import ChatResult, Provider
from legion.llm.types import ChatRequest
from legion.sim.behaviour import estimate_prompt_tokens

Outcome = Literal["ok", "rate_limited", "error", "no_answer"]
"""``error``: the provider answered with an error (5xx...); ``no_answer``: the call timed
out or its connection broke (a hung request)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One provider call."""

    start: float
    """``time.perf_counter()`` when the call was sent."""
    end: float
    outcome: Outcome
    charge: int
    """Tokens the simulator counts against its token limit: the prompt estimate plus
    ``max_tokens`` (charged on admission, never refunded, as OpenAI does)."""

    @property
    def admitted(self) -> bool:
        """Whether the provider admitted it (everything but a 429 uses up the limit)."""
        return self.outcome != "rate_limited"


def simulator_charge(request: ChatRequest) -> int:
    """What the simulator charges a request against its token limit."""
    max_tokens = request.params.get("max_tokens") or request.params.get("max_completion_tokens")
    completion = max_tokens if isinstance(max_tokens, int) else 0
    return estimate_prompt_tokens(list(request.messages)) + completion


class RecordingProvider:
    """Wraps ``inner``; every attempt is appended to ``attempts``."""

    def __init__(
        self,
        inner: Provider,
        *,
        charge: Callable[[ChatRequest], int] = simulator_charge,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.inner = inner
        self.attempts: list[Attempt] = []
        self._charge = charge
        self._clock = clock

    @property
    def name(self) -> str:
        return self.inner.name

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        start = self._clock()
        outcome: Outcome = "error"
        try:
            result = await self.inner.chat(request, timeout=timeout)
            outcome = "ok"
            return result
        except RateLimited:
            outcome = "rate_limited"
            raise
        except ProviderError as exc:
            outcome = "error" if exc.status is not None else "no_answer"
            raise
        finally:
            self.attempts.append(Attempt(start, self._clock(), outcome, self._charge(request)))

    async def aclose(self) -> None:
        await self.inner.aclose()
