"""SQL lives in ``.sql`` files beside this module, called by name.

``sql/<dialect>/queries.sql`` (and any other non-migration ``.sql`` file there) holds
the named queries (a ``-- name: x`` line starts each); ``sql/<dialect>/NNNN_*.sql`` are
the numbered migrations, applied in order.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_\w+\.sql$")


def _folder(dialect: str) -> resources.abc.Traversable:
    return resources.files(__package__).joinpath("sql", dialect)


@cache
def queries(dialect: str, file: str | None = None) -> dict[str, str]:
    """The named queries of one dialect, comments stripped: those of ``<file>.sql`` alone
    when ``file`` is given, else of ``queries.sql`` and every other ``.sql`` file that is
    not a migration (one file per concern)."""
    files = sorted(
        (
            e
            for e in _folder(dialect).iterdir()
            if e.name.endswith(".sql") and (file is None or e.name == f"{file}.sql")
        ),
        key=lambda e: (e.name != "queries.sql", e.name),
    )
    named: dict[str, str] = {}
    for entry in files:
        if _MIGRATION.match(entry.name):
            continue
        parts = _NAME.split(entry.read_text("utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in named:
                raise ValueError(f"two {dialect} queries are named {name!r}")
            lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
            named[name] = "\n".join(lines).strip().rstrip(";")
    return named


@cache
def migrations(dialect: str) -> tuple[tuple[int, str], ...]:
    """``(version, sql)`` for every migration of one dialect, oldest first."""
    found = []
    for entry in _folder(dialect).iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.read_text("utf-8")))
    return tuple(sorted(found))
