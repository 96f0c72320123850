"""The server-sent events decoder, fed in arbitrary pieces."""

from __future__ import annotations

import pytest

from legion.llm.sse import EventTooLarge, ServerSentEvent, SSEDecoder

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


def test_a_large_event_is_scanned_once_whatever_the_chunks() -> None:
    # 40 MB of data in one event, fed in 64 KiB chunks: the decoder examines each byte once
    # (a decoder that rescans what it holds back examines ~12 GB here).
    payload = b"x" * (40 * 1024 * 1024)
    stream = b"event: big\ndata: " + payload + b"\n\ndata: [DONE]\n\n"
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    piece = 64 * 1024
    for start in range(0, len(stream), piece):
        events.extend(decoder.feed(stream[start : start + piece]))
    assert [e.event for e in events] == ["big", ""]
    assert len(events[0].data) == len(payload) and events[1].data == "[DONE]"
    assert decoder.bytes_scanned == len(stream)


def test_an_event_over_the_limit_is_refused_while_it_arrives() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    assert decoder.feed(b"data: " + b"a" * 900 + b"\n\n") != []  # under the limit
    with pytest.raises(EventTooLarge) as caught:
        for _ in range(100):
            decoder.feed(b"data: " + b"b" * 400)  # one line that never ends
    assert caught.value.limit == 1000 and 1000 < caught.value.size <= 1500


def test_the_limit_counts_every_line_of_an_event() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"c" * 300 + b"\n" * 1 + (b"data: " + b"c" * 300 + b"\n") * 3)


def test_comments_carry_no_data() -> None:
    decoder = SSEDecoder()
    for _ in range(10):
        assert decoder.feed(b": ping\n\n") == []
    assert decoder.feed(b": pi") == [] and decoder.feed(b"ng\n\n") == []
    assert decoder.data_bytes == 0
    decoder.feed(b"da")
    assert decoder.data_bytes == 2  # a field line counts as it arrives
    assert decoder.feed(b"ta: 1\n\n") == [ServerSentEvent("", "1")]
    assert decoder.data_bytes == len(b"data: 1\n")
