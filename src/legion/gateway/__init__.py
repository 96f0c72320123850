"""``legion gateway``: an OpenAI-compatible endpoint for agents legion does not host.

An agent in another language or process points its OpenAI client at the gateway;
each request goes through legion's routes (capacity, retry policy, breaker, usage and
cost), and N gateway processes on N machines share one budget per provider key
through the store, as workers do (`legion.run.shares`)::

    POST /v1/chat/completions   plain or streamed (stream: true), passed on as it comes
    POST /v1/embeddings
    GET  /v1/usage              the calling key's calls, tokens and cost over every
                                gateway on the store, and its recorded calls per task
                                (?all=1, an admin key: every key's)
    GET  /healthz               no key needed: each route's pace now (503 while the store
                                does not answer)

Callers authenticate with the API keys of ``legion serve`` (``legion keys create``).
A call with an ``X-Legion-Task`` header (and optionally ``X-Legion-Step``) is recorded
as a step of that task, and answered from its record when asked again (see
`legion.gateway.app`); usage per key is added up in the store (`legion.gateway.usage`).
"""

from legion.gateway.app import Gateway
from legion.gateway.usage import KeyUsage, UsageBook

__all__ = ["Gateway", "KeyUsage", "UsageBook"]
