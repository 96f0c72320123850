"""JSON encoding of everything legion stores: inputs, outputs, step results, memory.

Values are stored as JSON so the store stays readable by people, dashboards and other
languages. pydantic models and dataclasses are encoded as objects; anything else that
JSON cannot represent raises `legion.errors.OutputError` with the reason.
"""

from __future__ import annotations

from typing import Any

import orjson

from legion.errors import OutputError

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(value: Any) -> Any:
    # Imported here, not at the top, so that `import legion` starts without pydantic; only
    # values orjson cannot encode itself come here.
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Encode ``value`` as JSON bytes, or raise `OutputError` saying why not.

    orjson answers a ``bytes`` whose memory is rounded up (4 KB at the least) and never
    shrunk; an encoded input or step held while its instance runs would keep all of it,
    so a short one is copied to its own size (a copy of under 64 KB costs little next to
    the encoding; a long one wastes at most what it holds)."""
    try:
        encoded = orjson.dumps(value, default=_default, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise OutputError(f"cannot store value as JSON: {exc}") from exc
    # The copy: the encoding joining two empty pieces, one allocation of its own size
    # (~40 ns; bytes(memoryview(...)) made a view first, ~140 ns).
    return encoded.join(_TWO_EMPTY) if len(encoded) < _TRIM_BELOW else encoded


_TRIM_BELOW = 65_536
_TWO_EMPTY = (b"", b"")


def same_value_hash(value: Any) -> int:
    """A hash of ``value``'s JSON, to tell equal values apart from others within this
    process (no copy is kept); raises like `dumps` for what JSON cannot hold."""
    try:
        return hash(orjson.dumps(value, default=_default, option=_OPTIONS))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise OutputError(f"cannot encode value as JSON: {exc}") from exc


def checked_text(value: Any, what: str) -> str:
    """``value`` if it is text a store can hold (a step's name, a memory key), else a
    `TypeError` (not ``str``) or `ValueError` (a lone surrogate, as a file name read with
    ``surrogateescape`` holds) that names ``what``: raised in the agent that gave it,
    rather than failing the store write its batch shares with other tasks."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}: {value!r}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} {value!r} cannot be stored: {exc.reason}") from None
    return value


def storable_text(text: str) -> str:
    """``text`` with any lone surrogate written as a ``\\udcXX`` escape, so that JSON can
    hold it (an error message quoting a file name read with ``surrogateescape``)."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError
