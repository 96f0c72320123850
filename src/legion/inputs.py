"""Input files: one JSON value per line, each line one task.

A line is an object whose keys are the agent's parameters (or, for an agent with one
parameter, any JSON value). Three optional fields are read and removed: ``"_key"`` sets
the task's idempotency key, ``"_session"`` its memory session and ``"_priority"`` its
priority (an integer, 0 by default; higher runs first, and its LLM calls are served
first at a shared route, see `legion.llm.lanes`). Without ``"_key"`` the
key is derived from the agent's name, the line number and the line's content, so
running the same file again resumes it instead of starting over.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legion import codec
from legion.errors import ConfigError


@dataclass(frozen=True, slots=True)
class InputLine:
    """One line of an input file: a value to submit, or why it cannot be.

    The line keeps its JSON text, not the value parsed from it: a run holds every line
    until its task ends, and parsed values took ~10 times their text (a 42 MB file of
    short lines: 400-650 MB). `value` parses it again, when the line is submitted."""

    line: int
    key: str | None
    text: bytes = b"null"
    session: str | None = None
    error: str | None = None
    priority: int = 0
    derived: bool = False  # its key is made from its agent, number and text (no "_key")

    @property
    def value(self) -> Any:
        """The value to submit: the line's JSON, without its ``"_key"``, ``"_session"``
        and ``"_priority"``."""
        value = codec.loads_given(self.text)
        if isinstance(value, dict):
            for name in _RESERVED:
                value.pop(name, None)
        return value


_RESERVED = ("_key", "_session", "_priority")


_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# The stores keep a priority in a 32-bit column (PostgreSQL's ``integer``), as the HTTP
# API bounds it.
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1
# As the HTTP API bounds them: an idempotency key or a session is 1 to 500 characters
# without NUL (PostgreSQL's text cannot hold it), and a key does not start with U+001F
# (the store's mark for tenants' keys).
KEY_MAX = 500


def read_jsonl(path: Path, agent: str) -> Iterator[InputLine]:
    """Parse ``path`` (``-``: stdin) line by line; blank lines are skipped, bad ones
    reported, a UTF-8 byte order mark at the start is not part of the first line."""
    with (
        path.open("rb") if str(path) != "-" else open(sys.stdin.fileno(), "rb", closefd=False) as f
    ):
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(_UTF16_BOMS):
                raise ConfigError(
                    f"{path} is UTF-16 text (what Windows PowerShell's > writes): legion reads "
                    f"UTF-8; convert it first (iconv -f UTF-16 -t UTF-8 {path} > NEW.jsonl)"
                )
            text = raw.removeprefix(_BOM) if number == 1 else raw
            text = text.strip()
            if not text:
                continue
            yield parse_line(text, number, agent)


def parse_line(text: bytes, number: int, agent: str) -> InputLine:
    try:
        value = codec.loads_given(text)
    except codec.TooDeep as exc:
        return InputLine(number, None, error=f"line {number} is {exc.msg}")
    except codec.JSONDecodeError as exc:
        if "not valid UTF-8" in exc.msg:  # (orjson's position is of the text it could read)
            return InputLine(number, None, error=f"line {number} is not UTF-8 text")
        if b"\x00" in text:
            said = f"line {number} holds NUL bytes (UTF-16 text? legion reads UTF-8)"
            return InputLine(number, None, error=said)
        wrong = codec.json_error(exc)
        return InputLine(number, None, error=f"line {number} is not valid JSON: {wrong}")
    key = session = None
    priority = 0
    if isinstance(value, dict) and ("_key" in value or "_session" in value or "_priority" in value):
        key = value.get("_key")
        session = value.get("_session")
        priority = value.get("_priority", 0)
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not PRIORITY_MIN <= priority <= PRIORITY_MAX
        ):
            return InputLine(
                number,
                None,
                error=f'line {number}: "_priority" must be an integer from {PRIORITY_MIN:,} '
                f"to {PRIORITY_MAX:,}",
            )
        if key is not None and not _text(key):
            return InputLine(number, None, error=f'line {number}: "_key" {_TEXT_RULE}')
        if session is not None and not _text(session):  # (as the API, as memory takes it)
            return InputLine(number, key, error=f'line {number}: "_session" {_TEXT_RULE}')
    if key is None:
        return InputLine(
            number, derived_key(agent, number, text), text, session, priority=priority,
            derived=True,
        )  # fmt: skip
    return InputLine(number, key, text, session, priority=priority)


_TEXT_RULE = f"must be a string of 1 to {KEY_MAX} characters, without NUL, not starting with U+001F"


def _text(value: object) -> bool:
    """Whether ``value`` is a key (``key``) or a session the stores and the API take (not
    starting with U+001F, the stores' mark for tenants' keys and sessions)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= KEY_MAX
        and "\x00" not in value
        and not value.startswith("\x1f")
    )


def derived_key(agent: str, line: int, text: bytes) -> str:
    digest = hashlib.blake2b(text, digest_size=12, person=b"legion-input").hexdigest()
    return f"{agent}:{line}:{digest}"
