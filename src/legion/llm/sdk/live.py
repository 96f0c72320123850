"""`LiveCall`: a streamed chat call under way, its pieces read as they arrive.

The call runs in a task of its own with a `legion.llm.deltas.StreamSink` set, so the
provider's pieces are queued as they come (see `legion.llm.deltas` for which attempt's
pieces those are); the reader takes them with `LiveCall.next` and, after the last,
the completion (or the call's error) with `LiveCall.result`. The call itself is
whatever the caller hands in: a recorded ``ctx.llm.chat`` for the SDK clients, a
gateway's call. A call that hands over no piece (a replay from its record, a provider
that does not stream) ends at once with its completion: the reader renders it whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from legion.llm.deltas import Delta, StreamSink, streaming_to
from legion.llm.types import ChatResponse


class LiveCall:
    """``call()`` started now, in a task of its own; `aclose` cancels it if it has not
    ended (the reader went away)."""

    __slots__ = ("_ended", "_pieces", "_task")

    def __init__(self, call: Callable[[], Awaitable[ChatResponse]]) -> None:
        self._pieces: asyncio.Queue[Delta | None] = asyncio.Queue()
        self._ended = False
        # asyncio.Task, not create_task: legion's task, not one the agent made (the loop's
        # factory reported a stream broken off and left open as a task the agent created
        # and left running). Its error is read here if no reader takes it (a stream left
        # open ends after its attempt, its record refused: a traceback on stderr).
        self._task = asyncio.Task(self._run(call), name="legion-stream")
        self._task.add_done_callback(_retrieved)

    async def _run(self, call: Callable[[], Awaitable[ChatResponse]]) -> ChatResponse:
        try:
            with streaming_to(StreamSink(self._pieces.put_nowait)):
                return await call()
        finally:
            self._pieces.put_nowait(None)

    async def next(self) -> Delta | None:
        """The next piece, or ``None`` once the call has ended (then see `result`)."""
        if self._ended:
            return None
        piece = await self._pieces.get()
        if piece is None:
            self._ended = True
        return piece

    async def result(self) -> ChatResponse:
        """The completion, once the call has ended; raises the call's error if it failed."""
        return await self._task

    async def aclose(self) -> None:
        """Cancel the call if it is still under way, and wait for it to stop."""
        task = self._task
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()  # retrieved: the reader has gone, no one else will


def _retrieved(task: asyncio.Task[ChatResponse]) -> None:
    if not task.cancelled():
        task.exception()
