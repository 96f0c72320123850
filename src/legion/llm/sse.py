"""An incremental decoder of server-sent events (the ``text/event-stream``
format of streamed completions), fed with bytes as they arrive.

It follows the HTML specification's parsing rules where providers use them:
lines end with ``\\n``, ``\\r\\n`` or ``\\r``; a blank line ends an event;
``data`` lines are joined with ``\\n``; ``event`` names the event; lines
starting with ``:`` are comments; other fields (``id``, ``retry``) are
ignored. An event cut off by the end of the stream is dropped, as the
specification requires.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event: its name (``""`` when the stream gave none) and its data."""

    event: str
    data: str


class SSEDecoder:
    """Turns chunks of an event stream into complete events."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by ``chunk``, in order."""
        buffer = self._buffer + chunk if self._buffer else chunk
        held = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # maybe the first half of a \r\n
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop() + held
        events = []
        for block in blocks:
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events


def _parse_block(block: bytes) -> ServerSentEvent | None:
    name = ""
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw.startswith(b":"):
            continue
        line = raw.decode("utf-8", "replace")
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None
    return ServerSentEvent(name, "\n".join(data))
