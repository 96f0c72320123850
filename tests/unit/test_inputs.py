"""Input lines: parsing, reserved fields, derived keys. No I/O beyond a temp file."""

from __future__ import annotations

from pathlib import Path

from legion.inputs import derived_key, parse_line, read_jsonl


def test_objects_bare_values_and_reserved_fields() -> None:
    a = parse_line(b'{"q": 1}', 1, "agent")
    assert (a.value, a.error, a.session) == ({"q": 1}, None, None)
    b = parse_line(b'"just a string"', 2, "agent")
    assert b.value == "just a string"
    c = parse_line(b'{"q": 1, "_key": "mine", "_session": "s"}', 3, "agent")
    assert (c.value, c.key, c.session) == ({"q": 1}, "mine", "s")
    d = parse_line(b'{"q": 1, "_priority": 10}', 4, "agent")
    assert (d.value, d.priority) == ({"q": 1}, 10)
    assert a.priority == 0
    assert '"_priority" must be an integer' in (
        parse_line(b'{"_priority": "high"}', 1, "a").error or ""
    )


def test_bad_lines_say_which_line_and_why() -> None:
    assert parse_line(b"{nope", 7, "a").error is not None
    assert "line 7 is not valid JSON" in (parse_line(b"{nope", 7, "a").error or "")
    assert '"_key" must be a string' in (parse_line(b'{"_key": 3}', 1, "a").error or "")


def test_keys_are_stable_and_distinguish_agent_line_and_content() -> None:
    k = derived_key("a", 1, b"{}")
    assert k == derived_key("a", 1, b"{}")
    assert (
        len({k, derived_key("b", 1, b"{}"), derived_key("a", 2, b"{}"), derived_key("a", 1, b"[]")})
        == 4
    )


def test_read_jsonl_skips_blank_lines_and_keeps_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('1\n\n  \n{"x": 2}\n')
    assert [(ln.line, ln.value) for ln in read_jsonl(path, "a")] == [(1, 1), (4, {"x": 2})]


def test_keys_and_sessions_are_bounded_as_the_api_bounds_them() -> None:
    for bad in ('""', '"' + "k" * 501 + '"', '"a\\u0000b"', '"\\u001fscoped"'):
        line = parse_line(b'{"q": 1, "_key": ' + bad.encode() + b"}", 4, "a")
        assert line.value is None and '"_key" must be a string of 1 to 500' in (line.error or "")
    # (A session starting with U+001F was taken here, and the task died at its first use
    # of memory: the stores mark tenants' sessions with it.)
    for bad in ('""', '"a\\u0000b"', '"\\u001fs"'):
        line = parse_line(b'{"q": 1, "_session": ' + bad.encode() + b"}", 5, "a")
        assert line.value is None and '"_session" must be' in (line.error or "")
        assert "not starting with U+001F" in (line.error or "")
    ok = parse_line(b'{"q": 1, "_key": "' + b"k" * 500 + b'", "_session": "s\\u001f"}', 6, "a")
    assert ok.error is None and ok.key == "k" * 500 and ok.session == "s\x1f"


def test_an_integer_past_64_bits_is_a_bad_line_not_a_float() -> None:
    line = parse_line(b'{"id": 123456789012345678901234567890}', 4, "agent")
    assert line.error is not None and line.error.startswith("line 4 is not valid JSON: ")
    assert "the integer 123456789012345678901234567890 is past 64 bits" in line.error


def test_text_that_is_not_json_says_what_was_found_where() -> None:
    # "not json" said: invalid literal, expected 'null' (orjson's guess from the n).
    assert parse_line(b"not json", 4, "a").error == (
        "line 4 is not valid JSON: unexpected 'not json' at line 1 column 1"
    )
    assert parse_line(b"[1, fals]", 5, "a").error == (
        "line 5 is not valid JSON: unexpected 'fals]' at line 1 column 5"
    )
    assert "unexpected end of data" in (parse_line(b'{"a": 1', 6, "a").error or "")


def test_a_line_nested_past_what_an_input_may_be_is_a_bad_line() -> None:
    # One such line stopped the whole run ("cannot store value as JSON: Recursion limit
    # reached", no line number, no output): JSON reads 1,024 levels, the store's encoder
    # writes 254 and an agent's input check reads 201.
    def nested(depth: int) -> bytes:
        return b'{"x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert parse_line(nested(200), 2, "a").error is None
    bad = parse_line(nested(201), 2, "a")
    assert bad.error == (
        "line 2 is nested deeper than 200 levels of lists and objects, the most legion takes"
    )
    wide = b"[" + b",".join([b"[1]"] * 1000) + b"]"  # many lists, none deep
    assert parse_line(wide, 3, "a").error is None


def test_a_line_that_is_not_utf8_says_so_and_no_position_of_another_text() -> None:
    # It said "str is not valid UTF-8: surrogates not allowed: line 1 column 1" for line 14.
    assert parse_line(b'{"a": "\xff"}', 14, "a").error == "line 14 is not UTF-8 text"


def test_a_utf16_file_is_refused_whole_and_nul_bytes_are_named(tmp_path: Path) -> None:
    """A UTF-16 file (Windows PowerShell's `>`) of 2 lines made 3 outputs: "line 1 is not
    UTF-8 text", then "not valid JSON" for a line 3 it does not have (a stray NUL)."""
    import pytest

    from legion.errors import ConfigError

    wide = tmp_path / "wide.jsonl"
    wide.write_text('{"n": 1}\n{"n": 2}\n', encoding="utf-16")
    with pytest.raises(ConfigError, match=r"is UTF-16 text .* convert it first"):
        list(read_jsonl(wide, "a"))
    (bare,) = list(read_jsonl(_written(tmp_path, b'{\x00"\x00n\x00"\x00}\x00\n'), "a"))
    assert bare.error == "line 1 holds NUL bytes (UTF-16 text? legion reads UTF-8)"


def _written(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "raw.jsonl"
    path.write_bytes(data)
    return path
