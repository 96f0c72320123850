"""The PostgreSQL store's packed array parameters: the bytes psycopg's own dumper writes,
and the values a real server reads back from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest
from psycopg.adapt import PyFormat, Transformer

from legion.store import postgres_arrays as arrays

FLOATS: list[Sequence[float]] = [
    [0.0],
    [1.5, -2.25, 1e300, -1e-300, 5e-324, math.inf, -math.inf, -0.0],
    [1_000_000.123456789] * 3,
    [float(i) / 7 for i in range(1000)],
]
INTS: list[Sequence[int]] = [[0], [1, -1, 2**31 - 1, -(2**31)], list(range(-500, 500))]
BIGS: list[Sequence[int]] = [[0], [2**63 - 1, -(2**63), 2**40], list(range(1000))]
TEXTS: list[Sequence[str]] = [
    [""],
    ["worker-1"] * 5,
    ["a", "bb", "", "succeeded", "x" * 300],
    [f"task-{i}" for i in range(1000)],
]
BLOBS: list[Sequence[bytes]] = [[b""], [b"{}", b"", b"\x00\xff" * 100], [b"1"] * 4]


def psycopg_bytes(values: Sequence[Any]) -> bytes:
    dumper = Transformer().get_dumper(list(values), PyFormat.BINARY)
    return bytes(dumper.dump(list(values)) or b"")


@pytest.mark.parametrize(
    ("pack", "cases"),
    [(arrays.float8s, FLOATS), (arrays.texts, TEXTS), (arrays.byteas, BLOBS)],
)
def test_packed_arrays_are_the_bytes_psycopg_writes(
    pack: Callable[[Sequence[Any]], Any], cases: list[Sequence[Any]]
) -> None:
    for values in cases:
        packed = pack(values)
        assert isinstance(packed, bytes)
        assert bytes(packed) == psycopg_bytes(values)


Pack = Callable[[Sequence[Any]], Any]


def test_what_is_not_packed_is_left_to_psycopg() -> None:
    """NULLs, no items, text that is not ASCII, numbers out of their type's range."""
    unpacked: list[tuple[list[Any], Pack]] = [
        ([1.0, None], arrays.float8s),
        ([], arrays.float8s),
        ([1, None], arrays.int4s),
        ([2**31], arrays.int4s),
        ([2**63], arrays.int8s),
        (["a", None], arrays.texts),
        (["été"] * 3, arrays.texts),
        (["a", "été"], arrays.texts),
        ([b"x", None], arrays.byteas),
    ]
    for values, pack in unpacked:
        assert pack(values) == values
        assert not isinstance(pack(values), bytes)


async def test_a_server_reads_back_what_was_packed(postgres_server: str) -> None:
    kinds: list[tuple[str, Pack, Sequence[Sequence[Any]]]] = [
        ("float8[]", arrays.float8s, FLOATS),
        ("integer[]", arrays.int4s, INTS),
        ("bigint[]", arrays.int8s, BIGS),
        ("text[]", arrays.texts, TEXTS),
        ("bytea[]", arrays.byteas, BLOBS),
    ]
    async with await psycopg.AsyncConnection.connect(postgres_server) as conn:
        for cast, pack, cases in kinds:
            for values in cases:
                cur = await conn.execute(f"SELECT %(v)b::{cast}", {"v": pack(values)})
                row = await cur.fetchone()
                assert row is not None
                got = [bytes(v) if isinstance(v, memoryview) else v for v in row[0]]
                assert got == list(values), cast
                if cast == "float8[]":  # -0.0 == 0.0: its sign too
                    assert [math.copysign(1, v) for v in got] == [
                        math.copysign(1, v) for v in values
                    ]


async def test_an_array_of_nulls_is_sent_empty_and_unnest_pads_it(postgres_server: str) -> None:
    """The hot path's statements unnest their arrays side by side: an empty one beside a
    full one is a NULL in every row."""
    nulls: list[Any] = [None] * 3
    kinds: list[tuple[str, Pack]] = [
        ("float8[]", arrays.float8s),
        ("integer[]", arrays.int4s),
        ("bigint[]", arrays.int8s),
        ("text[]", arrays.texts),
        ("bytea[]", arrays.byteas),
    ]
    async with await psycopg.AsyncConnection.connect(postgres_server) as conn:
        for cast, pack in kinds:
            packed = pack(nulls)
            assert isinstance(packed, bytes)
            cur = await conn.execute(
                f"SELECT n, v FROM unnest(%(n)b::bigint[], %(v)b::{cast}) AS u(n, v)",
                {"n": arrays.int8s([1, 2, 3]), "v": packed},
            )
            assert await cur.fetchall() == [(1, None), (2, None), (3, None)], cast
