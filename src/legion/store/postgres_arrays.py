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
from collections.abc import Sequence
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
    return _fixed(values, "i", 4, _INT4, Int4Array)


def int8s(values: Sequence[int | None]) -> Int8Array | list[Any]:
    """``values`` as ``bigint[]``."""
    return _fixed(values, "q", 8, _INT8, Int8Array)


def float8s(values: Sequence[float | None]) -> Float8Array | list[Any]:
    """``values`` as ``float8[]``."""
    return _fixed(values, "d", 8, _FLOAT8, Float8Array)


def texts(values: Sequence[str | None]) -> TextArray | list[Any]:
    """``values`` as ``text[]``; only ASCII text is packed here, the same bytes in every
    client encoding."""
    if _all_null(values):
        return TextArray(_NO_ITEMS.pack(0, 0, _TEXT))
    if not values or None in values:
        return list(values)
    first = values[0]
    assert first is not None
    if values.count(first) == len(values):
        if not first.isascii():
            return list(values)
        return TextArray(_repeated(first.encode(), len(values), _TEXT))
    if not all(map(str.isascii, values)):  # type: ignore[arg-type]
        return list(values)
    return TextArray(_varying(list(map(str.encode, values)), _TEXT))  # type: ignore[arg-type]


def byteas(values: Sequence[bytes | None]) -> ByteaArray | list[Any]:
    """``values`` as ``bytea[]``."""
    if _all_null(values):
        return ByteaArray(_NO_ITEMS.pack(0, 0, _BYTEA))
    if not values or None in values:
        return list(values)
    return ByteaArray(_varying(values, _BYTEA))  # type: ignore[arg-type]


def _fixed(
    values: Sequence[Any], typecode: str, size: int, oid: int, cls: type[P]
) -> P | list[Any]:
    """Numbers of ``size`` bytes each: the big-endian numbers, each after its length."""
    if _all_null(values):
        return cls(_NO_ITEMS.pack(0, 0, oid))
    if not values or None in values:
        return list(values)
    try:
        numbers = array(typecode, values)
    except (OverflowError, TypeError):  # not a number of this type: psycopg says why
        return list(values)
    if numbers.itemsize != size:  # (a platform whose C types differ: not seen)
        return list(values)
    if _SWAP:
        numbers.byteswap()
    raw = numbers.tobytes()
    n, stride = len(values), 4 + size
    body = bytearray(n * stride)
    body[3::stride] = bytes((size,)) * n  # each length (the other three bytes are 0)
    for i in range(size):
        body[4 + i :: stride] = raw[i::size]
    return cls(_HEAD.pack(1, 0, oid, n, 1) + body)


def _all_null(values: Sequence[Any]) -> bool:
    return bool(values) and values[0] is None and values.count(None) == len(values)


def _repeated(item: bytes, n: int, oid: int) -> bytes:
    return _HEAD.pack(1, 0, oid, n, 1) + (_LENGTH(len(item)) + item) * n


def _varying(items: Sequence[bytes], oid: int) -> bytes:
    lengths = map(_LENGTH, map(len, items))
    return _HEAD.pack(1, 0, oid, len(items), 1) + b"".join(
        chain.from_iterable(zip(lengths, items, strict=True))
    )


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
