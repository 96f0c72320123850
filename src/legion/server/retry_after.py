"""Every 503 answer carries ``Retry-After``: clients and load balancers back off instead
of retrying at once. An answer that names its own wait keeps it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER_SECONDS = 5
"""The wait a 503 asks for when its handler names none (seconds)."""


class RetryAfter:
    """ASGI middleware: add ``Retry-After`` to a 503 that has none."""

    def __init__(self, app: ASGIApp, *, seconds: int = RETRY_AFTER_SECONDS) -> None:
        self.app = app
        self.value = str(seconds).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_wait(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", self.value))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_wait)
