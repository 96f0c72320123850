"""``HEAD`` answered as ``GET`` without its body (RFC 9110, 9.3.2): a load balancer that
probes ``/healthz`` with ``HEAD`` got 405.

The event streams (``/events``, ``/v1/progress``) are left out: their body never ends,
so their ``HEAD`` is still 405.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_STREAMS = ("/events", "/v1/progress")


class HeadAsGet:
    """ASGI middleware: a ``HEAD`` request runs as ``GET``; its body is not sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or scope["path"].endswith(_STREAMS):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
