"""Streams written piece by piece (`ChunkStream`, `EventStream`) read back, by the
providers' own assemblers, as the completion they carry; and which attempt of a call
owns its stream (`legion.llm.deltas`)."""

from __future__ import annotations

import pytest

from legion.llm.anthropic import MessageAssembler
from legion.llm.deltas import Delta, StreamInterrupted, StreamSink, streaming_to
from legion.llm.openai import ChunkAssembler
from legion.llm.sdk.anthropic_wire import EventStream
from legion.llm.sdk.openai_wire import ChunkStream
from legion.llm.sse import SSEDecoder
from legion.llm.types import ChatResponse, ToolCall, Usage

ANSWER = ChatResponse(
    text="Let me look that up.",
    tool_calls=(
        ToolCall("call_1", "search", '{"q":"legion"}'),
        ToolCall("call_2", "fetch", '{"url":"x"}'),
    ),
    finish_reason="tool_calls",
    usage=Usage(12, 7),
    model="m",
)
# The pieces a provider might send it in: text in parts, each call's arguments in parts
# (compact JSON: Anthropic's tool input is an object, written again as compact JSON).
PIECES = [
    Delta(text="Let me "),
    Delta(text="look that up."),
    Delta(tool_index=0, tool_id="call_1", tool_name="search", arguments='{"q":'),
    Delta(tool_index=0, arguments='"legion"}'),
    Delta(tool_index=1, tool_id="call_2", tool_name="fetch"),
    Delta(tool_index=1, arguments='{"url":"x"}'),
]


def read(events: list[bytes], assembler: ChunkAssembler | MessageAssembler) -> ChatResponse:
    decoder = SSEDecoder()
    for event in decoder.feed(b"".join(events)):
        if not assembler.done:
            assembler.add(event)
    assert assembler.done
    return assembler.response()


def same(a: ChatResponse, b: ChatResponse) -> None:
    assert (a.text, a.tool_calls, a.finish_reason, a.usage) == (
        b.text,
        b.tool_calls,
        b.finish_reason,
        b.usage,
    )


def test_openai_chunks_written_piece_by_piece_or_whole_carry_the_completion() -> None:
    live = ChunkStream("chatcmpl-1", "m", include_usage=True)
    events = [live.start(), *(live.delta(p) for p in PIECES), *live.end(ANSWER)]
    same(read(events, ChunkAssembler("openai", "m")), ANSWER)
    whole = ChunkStream("chatcmpl-1", "m", include_usage=True).whole(ANSWER)
    same(read(whole, ChunkAssembler("openai", "m")), ANSWER)
    assert events[-1] == whole[-1] == b"data: [DONE]\n\n"


def test_anthropic_events_written_piece_by_piece_or_whole_carry_the_completion() -> None:
    live = EventStream("msg_1", "m")
    events = [live.start(), *(e for p in PIECES for e in live.delta(p)), *live.end(ANSWER)]
    same(read(events, MessageAssembler("anthropic", "m")), ANSWER)
    same(read(EventStream("msg_1", "m").whole(ANSWER), MessageAssembler("anthropic", "m")), ANSWER)
    empty = ChatResponse(text="", finish_reason="stop")
    blank = EventStream("msg_2", "m")
    same(read([blank.start(), *blank.end(empty)], MessageAssembler("anthropic", "m")), empty)


def test_the_first_attempt_to_hand_over_a_piece_owns_the_stream() -> None:
    got: list[Delta] = []
    sink = StreamSink(got.append)
    first, hedge, retry = object(), object(), object()
    sink.attach(first)
    sink.attach(hedge)  # before any piece, any attempt may start
    sink.emit(first, Delta(text="a"))
    with pytest.raises(StreamInterrupted):
        sink.emit(hedge, Delta(text="b"))  # a copy racing the owner stops at its first piece
    with pytest.raises(StreamInterrupted):
        sink.attach(retry)  # a retry after the owner broke is not sent
    sink.emit(first, Delta(text="c"))
    assert [d.text for d in got] == ["a", "c"] and sink.forwarded == 2


def test_the_assemblers_hand_their_pieces_to_the_sink_of_the_call_under_way() -> None:
    openai_events = ChunkStream("c", "m", include_usage=True)
    chunks = [openai_events.start(), *(openai_events.delta(p) for p in PIECES)]
    chunks += openai_events.end(ANSWER)
    anthropic_events = EventStream("msg", "m")
    events = [anthropic_events.start(), *(e for p in PIECES for e in anthropic_events.delta(p))]
    events += anthropic_events.end(ANSWER)
    for stream, make in ((chunks, ChunkAssembler), (events, MessageAssembler)):
        got: list[Delta] = []
        with streaming_to(StreamSink(got.append)):
            assembler = make("p", "m")
        read(stream, assembler)
        assert "".join(d.text for d in got) == ANSWER.text
        calls = {d.tool_index: d for d in got if d.tool_id}
        assert [(calls[i].tool_id, calls[i].tool_name) for i in (0, 1)] == [
            ("call_1", "search"),
            ("call_2", "fetch"),
        ]
        arguments = ["".join(d.arguments for d in got if d.tool_index == i) for i in (0, 1)]
        assert arguments == [call.arguments for call in ANSWER.tool_calls]
    assert read(chunks, ChunkAssembler("p", "m")).text == ANSWER.text  # no sink: no pieces


def test_stream_is_true_false_or_absent_and_nothing_else() -> None:
    # "stream": "yes" was taken as true (and an upstream that did not stream then hung it).
    from legion.llm.sdk.anthropic_wire import parse_messages
    from legion.llm.sdk.openai_wire import WireError, parse_chat

    ask = b'"messages": [{"role": "user", "content": "hi"}]'
    for parse in (parse_chat, parse_messages):
        body = b'{"max_tokens": 5, ' + ask
        assert parse(body + b', "stream": true}').stream is True
        assert parse(body + b"}").stream is False
        assert parse(body + b', "stream": null}').stream is False
        for odd in (b'"yes"', b"1", b"[]"):
            with pytest.raises(WireError, match="'stream' must be true or false"):
                parse(body + b', "stream": ' + odd + b"}")
