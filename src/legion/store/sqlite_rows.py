"""Statements of the SQLite store over many rows at once: a ``VALUES`` list of bound
parameters.

The hot path's batches (submit, the completions, the change feed, the steps) each run
as a few statements over all their rows, never a statement per row: the driver lets go
of the GIL and takes it back at every step of a statement, and beside a busy event loop
each hand-over waits for the loop (see ``benchmarks/sql_per_row.py``). The rows travel
as the parameters of a ``VALUES`` list, ``(?, ?, ...), (?, ?, ...), ...``: SQLite 3.40
re-parses a JSON text at every ``json_extract``, so a row carried in a JSON array cost
one parse per column (a 14-column completion: ~3 us of ~8 a task).

A query marks where its rows go with ``{rows}``. A statement is prepared once per row
count and kept in the connection's cache, so counts are few: batches go in chunks of a
power of two, and a statement that a row of NULLs leaves unchanged (an ``UPDATE`` joined
on the id, an ``INSERT ... SELECT`` joined to `tasks`) pads its last chunk up to one.

The driver binds an int, a float or a str at once, but hands every other value (``None``,
``bytes``) to its adapters first: a lookup in their table and two attribute lookups, ~250
ns a value, ~0.6 us a row of the submit's or the completions' (one blob, two or three
NULLs each). So a column that is NULL in every row of a chunk is written as the literal
``NULL`` rather than bound, and a column of blobs is bound as ``bytearray``, which the
driver binds at once, as the same BLOB.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain, repeat
from operator import is_not, itemgetter
from typing import Any

ROWS = "{rows}"
MAX_ROWS = 256  # rows of one statement, at most
CACHED_STATEMENTS = 512  # the connection's statement cache (sqlite3's default: 128)


def execute_rows(
    db: sqlite3.Connection, query: str, rows: Sequence[Sequence[Any]], *, pad: bool = False
) -> int:
    """Run ``query`` over ``rows`` (each of the same length), in as few statements as
    their count allows, in order; answers how many rows they changed. ``pad``: the
    query changes nothing for a row of NULLs, so the last chunk is filled up with them
    to a power of two rather than split into smaller ones."""
    if not rows:
        return 0
    width = len(rows[0])
    most = _chunk(db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    changed = 0
    start = 0
    while start < len(rows):
        left = len(rows) - start
        size = min(most, _chunk(left))
        if pad and left < most and size < left:
            size *= 2
        chunk = rows[start : start + size]
        nulls, values = _values(chunk)
        if len(chunk) < size:
            values.extend([None] * ((width - len(nulls)) * (size - len(chunk))))
        changed += db.execute(_statement(query, width, size, nulls), values).rowcount
        start += size
    return changed


def _values(chunk: Sequence[Sequence[Any]]) -> tuple[tuple[int, ...], list[Any]]:
    """The columns NULL in every row of ``chunk`` (written as ``NULL``, not bound), and
    the values to bind for the others, row after row; a column whose first row holds
    ``bytes`` is bound as ``bytearray``."""
    first = chunk[0]
    width = len(first)
    nulls = tuple(
        i
        for i, v in enumerate(first)
        if v is None and not any(map(is_not, map(itemgetter(i), chunk), repeat(None)))
    )
    values = list(chain.from_iterable(chunk))
    for n, column in enumerate(reversed(nulls)):  # the last first: the others stay put
        del values[column :: width - n]
    step = width - len(nulls)
    at = 0
    for column, v in enumerate(first):
        if column in nulls:
            continue
        if type(v) is bytes:
            values[at::step] = [bytearray(b) if type(b) is bytes else b for b in values[at::step]]
        at += 1
    return nulls, values


def _chunk(n: int) -> int:
    """The largest power of two that is at most ``n`` (and at most MAX_ROWS)."""
    return min(MAX_ROWS, 1 << (max(n, 1).bit_length() - 1))


@lru_cache(maxsize=512)
def _statement(query: str, width: int, size: int, nulls: tuple[int, ...]) -> str:
    """``query`` with ``size`` rows of ``width`` columns where it says ``{rows}``: a
    parameter each, or ``NULL`` for the columns of ``nulls`` (the same string each time,
    so the driver finds it in its cache)."""
    row = "(" + ", ".join("NULL" if i in nulls else "?" for i in range(width)) + ")"
    return query.replace(ROWS, ", ".join([row] * size))
