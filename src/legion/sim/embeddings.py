"""The simulator's ``/v1/embeddings``: deterministic embeddings, similar texts near each
other.

A text's vector is a bag of hashed features — its lower-cased words (weight 1) and the
character trigrams of each word (weight 0.5); for a text with no words (``"* * *"``, an
emoji), its characters — each hashed to one of ``dimensions`` coordinates with a hashed
sign, then scaled to length 1. Texts that share words or word
pieces share coordinates, so their cosine similarity is high; the same text always gets the
same vector, on every machine. Tests can assert rankings with it; it knows no synonyms.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import orjson

DEFAULT_DIMENSIONS = 384
MAX_DIMENSIONS = 4096
MAX_INPUTS = 2048
_WORD = re.compile(r"\w+")


def hashed_embedding(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The simulator's vector for ``text`` (length 1; all zeros only for a text of
    whitespace alone, as a real model has no such text to answer for: legion refuses it)."""
    vector = [0.0] * dimensions
    words = _WORD.findall(text.lower())
    for word in words:
        _add(vector, "w:" + word, 1.0)
        padded = f"#{word}#"
        for i in range(len(padded) - 2):
            _add(vector, "c:" + padded[i : i + 3], 0.5)
    if not words:  # punctuation, symbols, emoji: a direction of their own, not none
        for char in text:
            if not char.isspace():
                _add(vector, "s:" + char, 1.0)
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def _add(vector: list[float], feature: str, weight: float) -> None:
    digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    vector[digest % len(vector)] += weight if digest >> 63 else -weight


class EmbedBadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def parse_embed_request(raw: bytes) -> tuple[str, list[str], int]:
    """``(model, texts, dimensions)`` of an OpenAI ``/v1/embeddings`` body."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EmbedBadRequest(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise EmbedBadRequest("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise EmbedBadRequest("`model` must be a non-empty string.", "model")
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise EmbedBadRequest("`input` must be a non-empty string or list of them.", "input")
    if len(texts) > MAX_INPUTS:
        raise EmbedBadRequest(f"`input` holds more than {MAX_INPUTS} texts.", "input")
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise EmbedBadRequest(
            f"`dimensions` must be an integer from 1 to {MAX_DIMENSIONS}.", "dimensions"
        )
    return model, texts, dimensions


def embed_tokens(texts: list[str]) -> int:
    """The prompt tokens the simulator bills for ``texts`` (4 characters a token)."""
    return sum(-(-len(t) // 4) for t in texts)


def embeddings_body(model: str, texts: list[str], dimensions: int) -> bytes:
    tokens = embed_tokens(texts)
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": hashed_embedding(t, dimensions)}
                for i, t in enumerate(texts)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
