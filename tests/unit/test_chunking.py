"""The chunking rule of ``legion vectors load``."""

from __future__ import annotations

import pytest

from legion.vectors.chunking import chunk


def test_paragraphs_are_packed_up_to_the_limit_in_order() -> None:
    text = "one two\n\nthree   four\n  \nfive"
    assert chunk(text, 100) == ["one two\n\nthree four\n\nfive"]
    assert chunk(text, 12) == ["one two", "three four", "five"]
    assert chunk(text, 18) == ["one two", "three four\n\nfive"]


def test_a_long_paragraph_is_cut_at_a_space_or_at_the_limit() -> None:
    assert chunk("aaa bbb ccc ddd", 7) == ["aaa bbb", "ccc ddd"]
    assert chunk("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert all(len(c) <= 7 for c in chunk("lorem ipsum dolor sit amet " * 20, 7))


def test_nothing_to_chunk_and_bad_limits() -> None:
    assert chunk(" \n\n \t ") == []
    with pytest.raises(ValueError):
        chunk("x", 0)
