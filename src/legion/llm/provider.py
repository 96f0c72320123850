"""The `Provider` interface: one chat completion, with the rate-limit state seen.

A provider makes exactly one attempt per call. It never retries and never
waits for rate limits: `legion.llm.client.LLMClient` and
`legion.llm.capacity.Capacity` decide that, once, for every provider. It
translates every failure into the errors of `legion.errors` (`ProviderError`
and its subclasses when retrying may help, `ProviderRejected` when it cannot).
"""

from __future__ import annotations

from typing import Protocol

from legion.llm.types import ChatRequest, ChatResponse, RateLimitInfo
from legion.record import value


@value
class ChatResult:
    """A completion and the rate-limit headers that came with it."""

    response: ChatResponse
    rate_limits: RateLimitInfo


class Provider(Protocol):
    """Something that answers chat requests: an HTTP API, a local model, a fake."""

    @property
    def name(self) -> str:
        """Short name used in errors, statistics and responses (``"openai"``)."""
        ...

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        """Ask for one completion, taking at most ``timeout`` seconds in all.

        The timeout is a parameter, not left to the caller's ``asyncio.timeout``,
        because the provider turns it into a retryable `ProviderUnavailable`.

        Raises `legion.errors.ProviderError` (retryable) or
        `legion.errors.ProviderRejected` (permanent).
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...
