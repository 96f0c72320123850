"""Frames between a worker and its child processes: an 8-byte big-endian length, then a
pickled tuple whose first item says what it is.

======================================  =========================================
worker → child                          child → worker
======================================  =========================================
``(RUN, Invocation)``                   ``(READY,)`` once, when it can take work
``(REPLY, id, ok, value)``              ``(CALL, id, op, args)``
                                        ``(NOTIFY, op, args)``
                                        ``(DONE, Outcome)`` when the instance ended
======================================  =========================================

Call ids are unique for the child's lifetime, so a late reply to a call of an instance
that has ended is recognised and dropped.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Final

from legion.executors import protocol as p

READY: Final = "ready"
RUN: Final = "run"
CALL: Final = "call"
NOTIFY: Final = "notify"
REPLY: Final = "reply"
DONE: Final = "done"

_HEADER = struct.Struct(">Q")


def frame(message: tuple[Any, ...]) -> bytes:
    data = p.dumps(message)
    return _HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or ``None`` once the other side has closed the pipe."""
    try:
        header = await reader.readexactly(_HEADER.size)
        data = await reader.readexactly(_HEADER.unpack(header)[0])
    except asyncio.IncompleteReadError:
        return None
    message: tuple[Any, ...] = p.loads(data)
    return message
