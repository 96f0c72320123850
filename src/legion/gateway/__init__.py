"""``legion gateway``: an OpenAI-compatible endpoint for agents legion does not host.

An agent in another language or process points its OpenAI client at the gateway;
each request goes through legion's routes (capacity, retry policy, breaker, usage and
cost), and N gateway processes on N machines share one budget per provider key
through the store, as workers do (`legion.run.shares`)::

    POST /v1/chat/completions   plain or streamed (stream: true)
    POST /v1/embeddings
    GET  /v1/usage              the calling key's calls, tokens and cost
    GET  /healthz               no key needed: each route's pace now

Callers authenticate with the API keys of ``legion serve`` (``legion keys create``).
"""

from legion.gateway.app import Gateway
from legion.gateway.usage import KeyUsage

__all__ = ["Gateway", "KeyUsage"]
