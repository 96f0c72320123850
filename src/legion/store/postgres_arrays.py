"""The hot path's array parameters, in PostgreSQL's binary array format, built in C.

The PostgreSQL store sends a batch (a submit, the completions) as one statement whose
parameters are arrays, a column each, that ``unnest`` turns back into rows. psycopg
dumps a list item by item in Python, ~0.3 us an item, and a completion has fifteen
columns: ~6 us a task of the process's CPU, more than the rest of the store's work on
it. Here an array of numbers is packed by `array` and strided copies, and an array of
strings or bytes by ``map`` and ``join``, with no Python code run per item; an array
whose items are all the same (the worker that owns the batch, its agent, its tenant) is
one item repeated.

Each function answers a value psycopg sends as it is, with the array type the statement
casts it to. An array of NULLs only (no task of a submit has a key, no completion of a
batch an error) is sent empty: every statement on the hot path unnests its arrays side
by side, ``unnest(a, b, ...)``, which pads a shorter one with NULLs. An array holding
some ``None``, or anything else this does not pack, is answered as the list itself,
which psycopg dumps its own way. The
bytes are those psycopg's own dumper writes, and a server reads back the values packed
(`tests/integration/test_postgres_arrays.py`).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, TypeVar

from psycopg import adapters, pq
from psycopg.adapt import Dumper

_HEAD = struct.Struct(">iiIii")  # dimensions, has NULLs, item type, length, lower bound
_NO_ITEMS = struct.Struct(">iiI")  # no dimensions (an empty array), no NULLs, item type
_LENGTH = struct.Struct(">i").pack
_SWAP = sys.byteorder == "little"

# Type oids (pg_type): an item's and its array's.
_INT4, _INT4_ARRAY = 23, 1007
_INT8, _INT8_ARRAY = 20, 1016
_FLOAT8, _FLOAT8_ARRAY = 701, 1022
_TEXT, _TEXT_ARRAY = 25, 1009
_BYTEA, _BYTEA_ARRAY = 17, 1001


class _Packed(bytes):
    """An array, packed: sent as it is."""


P = TypeVar("P", bound=_Packed)


class Int4Array(_Packed):
    """``integer[]``."""


class Int8Array(_Packed):
    """``bigint[]``."""


class Float8Array(_Packed):
    """``float8[]``."""


class TextArray(_Packed):
    """``text[]``."""


class ByteaArray(_Packed):
    """``bytea[]``."""


def int4s(values: Sequence[int | None]) -> Int4Array | list[Any]:
    """``values`` as ``integer[]``."""
    return _packed(values, Int4Array, _INT4, lambda v: _fixed(v, "i", 4))


def int8s(values: Sequence[int | None]) -> Int8Array | list[Any]:
    """``values`` as ``bigint[]``."""
    return _packed(values, Int8Array, _INT8, lambda v: _fixed(v, "q", 8))


def float8s(values: Sequence[float | None]) -> Float8Array | list[Any]:
    """``values`` as ``float8[]``."""
    return _packed(values, Float8Array, _FLOAT8, lambda v: _fixed(v, "d", 8))


def texts(values: Sequence[str | None]) -> TextArray | list[Any]:
    """``values`` as ``text[]``; only ASCII text is packed here, the same bytes in every
    client encoding."""
    return _packed(values, TextArray, _TEXT, _text)


def byteas(values: Sequence[bytes | None]) -> ByteaArray | list[Any]:
    """``values`` as ``bytea[]``."""
    return _packed(values, ByteaArray, _BYTEA, _varying)


Items = Callable[[Sequence[Any]], bytes | bytearray | None]
"""Packs an array's items (``None``: it cannot)."""


def _packed(values: Sequence[Any], cls: type[P], oid: int, items: Items) -> P | list[Any]:
    """``values`` as an array of ``oid`` items packed by ``items``; an array of NULLs only
    is sent empty, one with some NULLs is left to psycopg."""
    if values and values[0] is None and values.count(None) == len(values):
        return cls(_NO_ITEMS.pack(0, 0, oid))
    if not values or None in values:
        return list(values)
    body = items(values)
    if body is None:
        return list(values)
    return cls(_HEAD.pack(1, 0, oid, len(values), 1) + body)


def _fixed(values: Sequence[Any], typecode: str, size: int) -> bytearray | None:
    """Numbers of ``size`` bytes each: the big-endian numbers, each after its length."""
    try:
        numbers = array(typecode, values)
    except (OverflowError, TypeError):  # not a number of this type: psycopg says why
        return None
    if numbers.itemsize != size:  # (a platform whose C types differ: not seen)
        return None
    if _SWAP:
        numbers.byteswap()
    raw = numbers.tobytes()
    n, stride = len(values), 4 + size
    body = bytearray(n * stride)
    body[3::stride] = bytes((size,)) * n  # each length (the other three bytes are 0)
    for i in range(size):
        body[4 + i :: stride] = raw[i::size]
    return body


def _text(values: Sequence[str]) -> bytes | None:
    """ASCII text, the same string repeated as one item repeated."""
    if not all(map(str.isascii, values)):
        return None
    first = values[0]
    if values.count(first) == len(values):
        return (_LENGTH(len(first)) + first.encode()) * len(values)
    return _varying(list(map(str.encode, values)))


def _varying(items: Sequence[bytes]) -> bytes:
    """Items of any length, each after its length."""
    lengths = map(_LENGTH, map(len, items))
    return b"".join(chain.from_iterable(zip(lengths, items, strict=True)))


def _dumper(array_oid: int) -> type[Dumper]:
    class PackedDumper(Dumper):
        format = pq.Format.BINARY
        oid = array_oid

        def dump(self, obj: Any) -> bytes:
            return obj  # type: ignore[no-any-return]

    return PackedDumper


for _cls, _oid in (
    (Int4Array, _INT4_ARRAY),
    (Int8Array, _INT8_ARRAY),
    (Float8Array, _FLOAT8_ARRAY),
    (TextArray, _TEXT_ARRAY),
    (ByteaArray, _BYTEA_ARRAY),
):
    adapters.register_dumper(_cls, _dumper(_oid))
