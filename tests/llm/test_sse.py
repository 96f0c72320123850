"""The server-sent events decoder, fed in arbitrary pieces."""

from __future__ import annotations

import pytest

from legion.llm.sse import ServerSentEvent, SSEDecoder

STREAM = (
    b": a comment\n"
    b"event: message_start\n"
    b'data: {"a": 1}\n'
    b"\n"
    b"data: first line\n"
    b"data: second line\n"
    b"id: 7\n"
    b"\n"
    b"data:no space\r\n\r\n"
    b"event: ping\r"
    b"data: {}\r"
    b"\r"
    b"data: [DONE]\n\n"
    b"data: cut off by the end"
)
EXPECTED = [
    ServerSentEvent("message_start", '{"a": 1}'),
    ServerSentEvent("", "first line\nsecond line"),
    ServerSentEvent("", "no space"),
    ServerSentEvent("ping", "{}"),
    ServerSentEvent("", "[DONE]"),
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, len(STREAM)])
def test_events_are_the_same_however_the_bytes_are_split(piece: int) -> None:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for start in range(0, len(STREAM), piece):
        events.extend(decoder.feed(STREAM[start : start + piece]))
    assert events == EXPECTED


def test_blank_lines_alone_make_no_event() -> None:
    assert SSEDecoder().feed(b"\n\n\n\nevent: x\n\n") == []
