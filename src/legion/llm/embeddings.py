"""Embeddings: the values of ``ctx.llm.embed`` and the OpenAI-compatible wire format.

An embedding call is an LLM call like a chat completion: it goes through a route, waits
for its turn at the route's capacity (its tokens are the texts' tokens, estimated at 4
characters a token, settled with the usage the provider reports), is retried by the
client's policy and is recorded as a step by ``ctx.llm.embed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from legion.errors import MalformedResponse
from legion.llm.transport import decode_json
from legion.llm.types import RateLimitInfo, Usage, token_count

_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """Texts to embed with ``model``; ``params`` pass through (``dimensions``...)."""

    model: str
    texts: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per text, in the order of the texts."""

    vectors: tuple[tuple[float, ...], ...]
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    provider: str = ""

    @property
    def dims(self) -> int:
        return len(self.vectors[0]) if self.vectors else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "vectors": [list(v) for v in self.vectors],
            "usage": {"prompt_tokens": self.usage.prompt_tokens, "completion_tokens": 0},
            "model": self.model,
            "provider": self.provider,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Embeddings:
        try:
            return cls(
                vectors=tuple(tuple(float(x) for x in v) for v in data["vectors"]),
                usage=Usage(int(data["usage"]["prompt_tokens"]), 0),
                model=str(data["model"]),
                provider=str(data["provider"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not recorded embeddings: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """Embeddings and the rate-limit headers that came with them."""

    embeddings: Embeddings
    rate_limits: RateLimitInfo


def estimate_embed_tokens(texts: Sequence[str]) -> int:
    """The tokens of an embedding call before it is made: 4 characters a token."""
    return sum(-(-len(text) // _CHARS_PER_TOKEN) for text in texts) or 1


def embed_payload(request: EmbedRequest) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": request.model, "input": list(request.texts)}
    payload.update(request.params)
    payload.setdefault("encoding_format", "float")
    return payload


def parse_embeddings(body: bytes, provider: str, count: int) -> Embeddings:
    """The embeddings in a ``/v1/embeddings`` answer (``data[].embedding``, ordered by
    ``index``); `MalformedResponse` if the body is not one or has the wrong count."""
    data = decode_json(body, provider)
    try:
        items = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
        vectors = tuple(tuple(float(x) for x in item["embedding"]) for item in items)
        usage = data.get("usage") or {}
        prompt = token_count(
            usage.get("prompt_tokens") or usage.get("total_tokens"), "prompt_tokens"
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponse(
            f"{provider} answered with unexpected embeddings: {exc!r}", provider=provider
        ) from exc
    if len(vectors) != count or len({len(v) for v in vectors}) > 1:
        raise MalformedResponse(
            f"{provider} answered {len(vectors)} embeddings of mixed or wrong shape for "
            f"{count} texts",
            provider=provider,
        )
    return Embeddings(vectors, Usage(prompt, 0), str(data.get("model") or ""), provider)
