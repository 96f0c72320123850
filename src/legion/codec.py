"""JSON encoding of everything legion stores: inputs, outputs, step results, memory.

Values are stored as JSON so the store stays readable by people, dashboards and other
languages, and read back as JSON reads: pydantic models and dataclasses are encoded as
objects; tuples and sets as lists (a set sorted, where its items compare); datetimes,
dates and UUIDs as their ISO text; numpy arrays as lists; non-text dict keys as text
(``{1: "a"}`` reads back as ``{"1": "a"}``, and a dict with both ``1`` and ``"1"`` keeps
one of them). Anything else that JSON cannot represent (NaN, an integer past 64 bits,
bytes, a Decimal, any other object) raises
`legion.errors.OutputError` with the reason.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Any

import orjson

from legion.errors import OutputError

_PLAIN = orjson.OPT_NON_STR_KEYS
_WITH_NUMPY = _PLAIN | orjson.OPT_SERIALIZE_NUMPY


def _options() -> int:
    """numpy's arrays are encoded as lists once numpy is imported; before, there are none,
    and with the flag orjson imports numpy itself the first time it meets a value it
    cannot encode (a function among a step's inputs): ~0.2 s on the event loop, said to
    be the agent's own import."""
    return _WITH_NUMPY if "numpy" in sys.modules else _PLAIN


def _default(value: Any) -> Any:
    # Imported here, not at the top, so that `import legion` starts without pydantic; only
    # values orjson cannot encode itself come here.
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, (set, frozenset)):
        # Sorted: a set's own order changes from one process to the next (string hashes
        # are salted), and with it a run's output file.
        try:
            return sorted(value)
        except TypeError:  # (items that do not compare: in the set's order)
            return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any, *, finite: bool = True) -> bytes:
    """Encode ``value`` as JSON bytes, or raise `OutputError` saying why not.

    ``finite``: refuse NaN and the infinities, which JSON has no number for (orjson
    writes them as null). Looking for them walks a value whose JSON holds a null
    (~0.1-0.2 us a node): a value legion made from JSON itself (a provider's answer) skips it.

    orjson answers a ``bytes`` whose memory is rounded up (4 KB at the least) and never
    shrunk; an encoded input or step held while its instance runs would keep all of it,
    so a short one is copied to its own size (a copy of under 64 KB costs little next to
    the encoding; a long one wastes at most what it holds)."""
    try:
        encoded = orjson.dumps(value, default=_default, option=_options())
    except (TypeError, orjson.JSONEncodeError) as exc:
        why = str(exc)
        inner = exc.__cause__
        if inner is not None and not isinstance(inner, TypeError | orjson.JSONEncodeError):
            # (a model whose own encoding failed: "Blob" alone hid its bytes' reason)
            why = f"{why} ({type(inner).__name__}: {inner})"
        if why == "Integer exceeds 64-bit range":  # (which JSON reader would read it?)
            why = "it holds an integer past 64 bits (store it as text: str(n))"
        elif why == "Recursion limit reached":
            why = "it nests deeper than 254 levels of lists and objects"
        raise OutputError(f"cannot store value as JSON: {why}") from exc
    # (orjson writes NaN and the infinities as null; an int's `in` is memchr, ~20 ns,
    # where a bytes' `in` costs ~200)
    if finite and _N in encoded and encoded.find(b"null") >= 0:
        _refuse_non_finite(value)
    # The copy: the encoding joining two empty pieces, one allocation of its own size
    # (~40 ns; bytes(memoryview(...)) made a view first, ~140 ns).
    return encoded.join(_TWO_EMPTY) if len(encoded) < _TRIM_BELOW else encoded


_TRIM_BELOW = 65_536
_TWO_EMPTY = (b"", b"")
_N = ord("n")


def _refuse_non_finite(value: Any) -> None:
    """Raise `OutputError` if ``value`` holds NaN or an infinity, which JSON has no number
    for: stored as null, it would come back as ``None`` (a replayed step answering
    differently from its first run). Says where, as ``value[2]['score']``."""
    if _finite(value):
        return
    path = _non_finite_at(value, "value", 0)
    if path is not None:
        raise OutputError(
            f"cannot store value as JSON: {path} is NaN or infinite, which JSON has no "
            "number for (store None, or the number as text)"
        )


def _finite(value: Any) -> bool:
    """Whether ``value`` holds no NaN or infinity: the quick look, plain JSON values
    walked with a stack of their own (~0.1 us a node); any other kind of value is looked
    into by `_non_finite_at`."""
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            push(item.values())
        elif kind is list or kind is tuple:
            push(item)
        elif kind is float:
            if not _isfinite(item):
                return False
        elif (
            kind is not str
            and kind is not int
            and kind is not bool
            and item is not None
            and _non_finite_at(item, "", 0) is not None
        ):
            return False
    return True


_isfinite = math.isfinite


def _non_finite_at(value: Any, path: str, depth: int) -> str | None:
    """Where in ``value`` a non-finite float is, or ``None``: dicts, lists, tuples, sets,
    dataclasses, pydantic models and numpy arrays are looked into."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if depth > 200:  # (orjson refuses deeper values before this is reached)
        return None
    if isinstance(value, dict):
        items: Any = ((f"{path}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, (set, frozenset)):
        items = ((f"{path} (an item)", v) for v in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f"{path}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value))
    elif hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):
        items = ((f"{path}.{k}", getattr(value, k)) for k in type(value).model_fields)
    elif hasattr(value, "dtype") and hasattr(value, "tolist"):  # a numpy array or scalar
        return _non_finite_at(value.tolist(), path, depth + 1)
    else:
        return None
    for where, item in items:
        found = _non_finite_at(item, where, depth + 1)
        if found is not None:
            return found
    return None


def same_value_hash(value: Any) -> int:
    """A hash of ``value``'s JSON, to tell equal values apart from others within this
    process (no copy is kept); raises like `dumps` for what JSON cannot hold."""
    try:
        return hash(orjson.dumps(value, default=_default, option=_options()))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise OutputError(f"cannot encode value as JSON: {exc}") from exc


def quoted(text: str, limit: int = 80) -> str:
    """``text`` quoted for a message, shortened to ``limit`` characters with ``...``
    (a step's name or an embedded text may be 100,000 characters long)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def canonical(data: bytes) -> bytes:
    """JSON ``data`` written one way whatever the order of its objects' keys: what two
    inputs that are equal as JSON compare by (``{"b": 2, "a": 1}`` is ``{"a": 1, "b":
    2}``). Data that does not parse stays as it is."""
    try:
        return orjson.dumps(orjson.loads(data), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        return data


def checked_text(value: Any, what: str) -> str:
    """``value`` if it is text a store can hold (a step's name, a memory key), else a
    `TypeError` (not ``str``), `ValueError` (a lone surrogate, as a file name read with
    ``surrogateescape`` holds) or `OutputError` (a NUL, or longer than `MAX_NAME_BYTES`)
    that names ``what``: raised in the agent that gave it, rather than failing the store
    write its batch shares with other tasks."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}: {value!r}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what} {value!r} cannot be stored: {exc.reason}") from None
    # (Each the same on every store, and for good: `OutputError`, which no retry helps.)
    if "\x00" in value:  # (SQLite would keep it; PostgreSQL's text holds none)
        raise OutputError(f"{what} {value!r} cannot be stored: it holds a NUL character")
    if len(value) > SHORT_NAME and len(value.encode()) > MAX_NAME_BYTES:
        raise OutputError(
            f"{what} {value[:40]!r}... cannot be stored: it is {len(value.encode()):,} bytes "
            f"long, past the {MAX_NAME_BYTES:,} a store's index holds (name it by a digest "
            "of what it stands for)"
        )
    return value


MAX_NAME_BYTES = 2048
"""The longest step name or memory key, in UTF-8 bytes: PostgreSQL indexes them, and an
index entry holds no more than about 2,700 bytes."""
SHORT_NAME = MAX_NAME_BYTES // 4
"""Characters no text this long passes `MAX_NAME_BYTES` in (4 bytes a character at most)."""


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

_LONG_DIGITS = re.compile(rb"\d{19}")  # (every integer past 64 bits has 19 digits or more)
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


MAX_DEPTH = 200
"""The deepest nesting of lists and objects a value from outside may have: an agent's
input is checked by pydantic, which reads no deeper (201), and a store's JSON encoder
writes no deeper than 254."""


class TooDeep(JSONDecodeError):
    """A text that is JSON, nested deeper than `MAX_DEPTH`."""


def loads_given(data: bytes) -> Any:
    """``data`` as JSON, from outside (an input line, a request's body), or
    `JSONDecodeError`: as `loads`, and an integer past 64 bits is refused where orjson
    reads it as a float (``2**70`` would run as ``1.1805916207174113e+21``, and two
    such inputs could not be told apart), and a value nested deeper than `MAX_DEPTH`
    (`TooDeep`: it would fail later, where it is validated or stored)."""
    deep = False
    try:
        value = orjson.loads(data)
    except JSONDecodeError as exc:
        if not exc.msg.startswith("depth limit exceeded"):
            raise
        deep = True  # (orjson's own limit, past ours: said as ours is)
    if deep or (data.count(b"[") + data.count(b"{") > MAX_DEPTH and _depth(value) > MAX_DEPTH):
        raise TooDeep(
            f"nested deeper than {MAX_DEPTH} levels of lists and objects, the most legion takes",
            data.decode(errors="replace"),
            0,
        )
    if _LONG_DIGITS.search(data) is not None:
        import json  # (the exact reading, for the rare text with such a run of digits)

        try:
            json.loads(data, parse_int=_int64)
        except _TooLong as exc:
            text = data.decode(errors="replace")
            raise JSONDecodeError(str(exc), text, max(0, text.find(exc.literal))) from None
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar: 0), without recursion."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, level + 1))
    return deepest


def json_error(exc: JSONDecodeError) -> str:
    """What is wrong with a text that is not JSON, for a person: orjson's words, except
    its "invalid literal, expected 'null'" for any text starting with an n (or a t, an
    f), which says where and what was found instead."""
    if not exc.msg.startswith("invalid literal"):
        return str(exc)
    found = exc.doc[exc.pos : exc.pos + 20]
    return f"unexpected {found!r} at line {exc.lineno} column {exc.colno}"


class _TooLong(ValueError):
    def __init__(self, message: str, literal: str) -> None:
        super().__init__(message)
        self.literal = literal


def _int64(text: str) -> int:
    number = int(text)
    if not _INT_MIN <= number <= _UINT_MAX:
        shown = text if len(text) <= 40 else f"{text[:37]}..."
        raise _TooLong(
            f"the integer {shown} is past 64 bits, which a JSON number here cannot hold "
            "(send it as a string)",
            text,
        )
    return number
