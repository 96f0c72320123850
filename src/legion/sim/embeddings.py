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

import base64
import hashlib
import math
import re
import struct
from typing import Any, NamedTuple

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


class EmbedAsk(NamedTuple):
    """A valid ``/v1/embeddings`` request."""

    model: str
    texts: list[str]
    """Each input as text (an input of token ids: those ids, as words)."""
    dimensions: int
    tokens: int
    """The prompt tokens it is billed: 4 characters a token, or its token ids."""
    base64: bool
    """Whether the vectors are answered as base64 of little-endian float32s."""


def parse_embed_request(raw: bytes) -> EmbedAsk:
    """An OpenAI ``/v1/embeddings`` body: ``input`` a text, a list of them, a list of
    token ids or a list of such lists, as OpenAI takes."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EmbedBadRequest(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise EmbedBadRequest("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise EmbedBadRequest("`model` must be a non-empty string.", "model")
    texts, tokens = _inputs(body.get("input"))
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
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise EmbedBadRequest("`encoding_format` must be 'float' or 'base64'.", "encoding_format")
    return EmbedAsk(model, texts, dimensions, tokens, encoding == "base64")


def _inputs(given: Any) -> tuple[list[str], int]:
    """The texts of an ``input`` and the tokens they are billed."""
    one_list_of_ids = isinstance(given, list) and given and all(_is_token(t) for t in given)
    if isinstance(given, str) or one_list_of_ids:
        given = [given]
    if not isinstance(given, list) or not given:
        raise EmbedBadRequest(_INPUT_FORMS, "input")
    texts: list[str] = []
    tokens = 0
    for item in given:
        if isinstance(item, str) and item:
            texts.append(item)
            tokens += -(-len(item) // 4)
        elif isinstance(item, list) and item and all(_is_token(t) for t in item):
            texts.append(" ".join(f"t{t}" for t in item))
            tokens += len(item)
        else:
            raise EmbedBadRequest(_INPUT_FORMS, "input")
    return texts, tokens


_INPUT_FORMS = (
    "`input` must be a non-empty string, a list of them, a list of token ids (integers) "
    "or a list of such lists."
)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def embeddings_body(ask: EmbedAsk) -> bytes:
    """The answer to ``ask``: each input's vector, as floats or base64."""
    data = []
    for i, text in enumerate(ask.texts):
        vector: Any = hashed_embedding(text, ask.dimensions)
        if ask.base64:
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": ask.tokens, "total_tokens": ask.tokens}
    return orjson.dumps({"object": "list", "data": data, "model": ask.model, "usage": usage})
