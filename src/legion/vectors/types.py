"""The values of vector collections: a collection's description, an item, a search hit."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from legion.errors import VectorError

Scope = Literal["session", "shared"]
SCOPES: tuple[Scope, ...] = ("session", "shared")
SHARED = ""
"""The session key of every item of a shared collection."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_KEY = re.compile(r'^[^"\\\x00-\x1f]{1,128}$')
"""A metadata key a filter can name: any text but a quote, a backslash or a control
character (SQLite's JSON path quotes the key), as metadata is written."""
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """A collection: its name, scope, the model that embeds it and the vectors' dimension."""

    name: str
    scope: Scope
    model: str
    dims: int
    items: int | None = None  # filled in by listings


@dataclass(frozen=True, slots=True)
class Item:
    """One vector to write: its id, text, metadata (a JSON object) and embedding."""

    id: str
    text: str
    metadata: Mapping[str, Any]
    embedding: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result: ``score`` is the cosine similarity (1: same direction)."""

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    score: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "metadata": dict(self.metadata),
            "score": self.score,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hit:
        return cls(str(data["id"]), str(data["text"]), dict(data["metadata"]), float(data["score"]))


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise VectorError(
            f"bad collection name {name!r}: use 1-100 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )
    return name


def nul_in(value: Any) -> bool:
    """Whether ``value`` (text, or JSON: its keys too) holds a NUL character, which
    PostgreSQL keeps in no text or JSON column: refused on every store alike."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(nul_in(k) or nul_in(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(nul_in(v) for v in value)
    return False


NUL_REFUSED = "holds a NUL character (U+0000), which no store keeps: remove it"


def check_scope(scope: object) -> Scope:
    if scope == "session" or scope == "shared":
        return scope
    raise VectorError(f"bad scope {scope!r}: use 'session' or 'shared'")


def check_where(where: Mapping[str, Any] | None) -> dict[str, Scalar]:
    """Metadata filters: top-level keys that must equal a string, number or boolean."""
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise VectorError(f"where= must be a dict of metadata key -> value, not {where!r}")
    for key, value in where.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise VectorError(
                f"bad metadata key {key!r} in where=: 1 to 128 characters, no quote, "
                "backslash or control character"
            )
        if not isinstance(value, str | int | float | bool):
            raise VectorError(
                f"where={{{key!r}: ...}} must be a string, number or boolean, not {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise VectorError(f"where={{{key!r}: {value!r}}}: JSON has no such number")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise VectorError(f"where={{{key!r}: ...}}: {value} is past a 64-bit integer")
    return dict(where)


def check_dims(info: CollectionInfo, dims: int) -> None:
    if dims != info.dims:
        raise VectorError(
            f"wrong dimension: collection {info.name!r} holds {info.dims}-dimensional vectors "
            f"(model {info.model!r}); got {dims}"
        )


def check_direction(vector: Sequence[float], what: str) -> None:
    """Refuse a vector that cosine similarity cannot compare: all zeros (it has no
    direction, and its distance to anything is undefined) or with a NaN or an infinity.
    ``what`` names it: ``"the embedding of text 2"``."""
    norm = math.fsum(x * x for x in vector)
    if not math.isfinite(norm):
        raise VectorError(f"{what} holds a NaN or an infinity: it cannot be compared")
    if norm == 0.0:
        raise VectorError(
            f"{what} is all zeros: it has no direction, so no cosine similarity with "
            "anything (the embedding model answered zeros for it)"
        )


def check_same(found: CollectionInfo, wanted: CollectionInfo) -> None:
    if found.scope != wanted.scope:
        raise VectorError(
            f"collection {found.name!r} is {found.scope}-scoped, not {wanted.scope}-scoped"
        )
    if found.model != wanted.model:
        raise VectorError(
            f"collection {found.name!r} holds embeddings of model {found.model!r}, not "
            f"{wanted.model!r}: use the same embedding model (model=) or another collection"
        )
    check_dims(found, wanted.dims)
