"""Request bodies larger than the limit are refused with 413, before they are read whole;
bodies that do not arrive in time, with 408.

A declared ``Content-Length`` over the limit is answered at once; a body sent without
one (chunked) is counted as it arrives and refused when it passes the limit. A body must
arrive whole within ``body_seconds`` of its first read: a client that sends half of one
and waits would otherwise hold its request's place among those in progress for good
(128 such, and every tenant was answered 503).
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: at most ``max_bytes`` of request body."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, body_seconds: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse()(scope, receive, send)
            return
        received = 0
        deadline: float | None = None
        whole = False  # the body has arrived: what follows (a disconnect) is not timed

        async def limited() -> Message:
            nonlocal received, deadline, whole
            if whole:
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.body_seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body did not arrive within {self.body_seconds:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())
                whole = not message.get("more_body", False)
            else:
                whole = True
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    def _refuse(self) -> JSONResponse:
        return JSONResponse({"detail": self._message()}, status_code=413)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
