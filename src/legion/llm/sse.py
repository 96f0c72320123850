"""An incremental decoder of server-sent events (the ``text/event-stream``
format of streamed completions), fed with bytes as they arrive.

It follows the HTML specification's parsing rules where providers use them:
lines end with ``\\n``, ``\\r\\n`` or ``\\r``; a blank line ends an event;
``data`` lines are joined with ``\\n``; ``event`` names the event; lines
starting with ``:`` are comments; other fields (``id``, ``retry``) are
ignored. An event cut off by the end of the stream is dropped, as the
specification requires.

Work is linear in the bytes fed: each byte is scanned once for a line end,
and only the line being received is held back between two chunks (a 40 MB
event arriving in 64 KiB chunks is scanned once, not once per chunk).
``max_event_bytes`` bounds an event (its field lines together): past it,
`EventTooLarge` is raised while the event is still arriving.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"[\r\n]")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event: its name (``""`` when the stream gave none) and its data."""

    event: str
    data: str


class EventTooLarge(Exception):
    """Raised by `SSEDecoder.feed` when an event grows past ``max_event_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an event of at least {size:,} bytes, over the limit of {limit:,}")
        self.size = size
        self.limit = limit


class SSEDecoder:
    """Turns chunks of an event stream into complete events.

    ``bytes_scanned`` counts the bytes examined in search of line ends (each
    byte fed once); ``data_bytes`` counts the bytes of lines that are not
    comments, so a reader can tell a stream that carries data from one that
    only sends keep-alive comments (``: ping``).
    """

    __slots__ = (
        "_after_cr",
        "_data",
        "_event_size",
        "_line",
        "_max_event",
        "_name",
        "bytes_scanned",
        "data_bytes",
    )

    def __init__(self, *, max_event_bytes: int | None = None) -> None:
        if max_event_bytes is not None and max_event_bytes < 1:
            raise ValueError("max_event_bytes must be >= 1 (or None: unbounded)")
        self._max_event = max_event_bytes
        self._line = bytearray()  # the line being received, its end not seen yet
        self._after_cr = False  # the last byte fed ended a line with \r: skip a \n next
        self._name = ""
        self._data: list[str] = []
        self._event_size = 0  # bytes of the event's complete lines
        self.bytes_scanned = 0
        self.data_bytes = 0

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by ``chunk``, in order."""
        events: list[ServerSentEvent] = []
        size = len(chunk)
        start = 0
        if self._after_cr and size:
            self._after_cr = False
            if chunk[0] == 0x0A:  # the \n of a \r\n cut in two
                start = 1
        line = self._line
        search = _LINE_END.search
        while start < size:
            found = search(chunk, start)
            end = size if found is None else found.start()
            self.bytes_scanned += end - start + (found is not None)
            piece = chunk[start:end]
            head = line[:1] if line else piece[:1]
            if head and head != b":":  # a field line, not a comment nor a blank line
                self.data_bytes += len(piece) + (found is not None)
            if found is None:
                line += piece
                self._check_size(len(line))
                break
            if line:
                line += piece
                complete = bytes(line)
                line.clear()
            else:
                complete = piece
            start = end + 1
            if chunk[end] == 0x0D:  # \r: a \n right after it ends the same line
                if start < size:
                    if chunk[start] == 0x0A:
                        start += 1
                else:
                    self._after_cr = True
            event = self._line_done(complete)
            if event is not None:
                events.append(event)
        return events

    def _check_size(self, pending: int) -> None:
        limit = self._max_event
        if limit is not None and self._event_size + pending > limit:
            raise EventTooLarge(self._event_size + pending, limit)

    def _line_done(self, raw: bytes) -> ServerSentEvent | None:
        if not raw:  # a blank line ends the event
            data, name = self._data, self._name
            self._data, self._name, self._event_size = [], "", 0
            if not data:
                return None
            return ServerSentEvent(name, "\n".join(data))
        if raw.startswith(b":"):
            return None
        self._event_size += len(raw) + 1
        self._check_size(0)
        line = raw.decode("utf-8", "replace")
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        return None
