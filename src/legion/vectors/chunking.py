"""How ``legion vectors load`` cuts documents into chunks.

The rule: a document's paragraphs (separated by blank lines, whitespace inside them
collapsed) are packed in order into chunks of at most ``max_chars`` characters, joined
by blank lines; a paragraph longer than ``max_chars`` is cut at the last space before the
limit (or at the limit, in a word that long). No overlap. A chunk's id is the document's id,
``#`` and the chunk's number from 0, so re-running a load finds what it already loaded.
"""

from __future__ import annotations

import re

DEFAULT_CHUNK_CHARS = 1000
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SPACE = re.compile(r"\s+")


def chunk(text: str, max_chars: int = DEFAULT_CHUNK_CHARS) -> list[str]:
    """The chunks of ``text`` (none for a text with nothing but whitespace)."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    pieces: list[str] = []
    for paragraph in _PARAGRAPHS.split(text):
        text = _SPACE.sub(" ", paragraph).strip()  # (single spaces between words)
        start = 0  # (not the rest copied at each cut: a 16 MB paragraph took 26 s)
        while len(text) - start > max_chars:
            cut = text.rfind(" ", start, start + max_chars + 1)
            if cut <= start:
                cut = start + max_chars
            pieces.append(text[start:cut])
            start = cut + 1 if text.startswith(" ", cut) else cut
        if start < len(text):
            pieces.append(text[start:])
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] += "\n\n" + piece
        else:
            chunks.append(piece)
    return chunks
