"""``SheddingProtocol``: uvicorn's HTTP protocol (httptools), refusing at the socket.

Under overload most requests are refused, and each refusal costs the server's one event
loop what it costs: CPU the admitted requests then wait for. Through the application, a
refusal is a request object, an asyncio task, the ASGI calls and the response's headers
encoded one by one. Here the bound on requests in progress
(`legion.server.admission.InProgressLimit`) is consulted as soon as a request's headers
are parsed, and a refusal is one prepared ``503`` (with ``Retry-After``) written to the
connection: no task, no application, and the request's body, if any, is dropped as it
arrives. The connection stays open for the next request (unless the client asked to close
it).

A request admitted here is counted in progress at once (its scope says so, under
`legion.server.admission.ADMITTED`), and its task is started by uvicorn as usual; the
application's `InProgressLimit` counts it finished. What this protocol leaves to the
application, whose `InProgressLimit` then decides: the event streams and ``/healthz``,
which the bound leaves out; a ``HEAD``; a path with escapes; a request pipelined behind
one still answering (uvicorn starts it later, or never if the connection closes first);
an upgrade. With the access log on, every request goes through the application, so that
each is logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from legion.server.admission import ADMITTED, InProgressLimit, unbounded

_STATUS = b"HTTP/1.1 503 Service Unavailable\r\n"
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class SheddingProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that answers a request over ``admission``'s bound itself."""

    def __init__(
        self,
        *args: Any,
        admission: InProgressLimit,
        header_seconds: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._admission = admission
        self._refused = False
        # A request's headers must arrive within this long of the connection (or of the
        # request's first byte): connections that sent part of them and waited were held
        # open for good, a file descriptor each.
        self._header_seconds = header_seconds
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._refused = False
        self._expect_headers()
        super().on_message_begin()

    def _expect_headers(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_seconds, self._overdue)

    def _headers_arrived(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _overdue(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        if self._sheddable():
            if self._admission.full():
                self._refuse()
                return
            # Counted in progress now, not when its task first runs: under overload many
            # requests are read before the first of them runs, and all would pass.
            admitted = self._admission.admit()
            self.scope[ADMITTED] = admitted  # type: ignore[literal-required]
            try:
                super().on_headers_complete()
            except BaseException:  # no task will count it finished
                self._admission.release(admitted)
                raise
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _sheddable(self) -> bool:
        if self.access_log or self.parser.should_upgrade():
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False  # pipelined behind a request still answering: uvicorn queues it
        if self.parser.get_method() == b"HEAD":
            return False
        path = self.url.partition(b"?")[0]
        if not path.startswith(b"/") or b"%" in path:
            return False
        return not unbounded(path.decode("ascii", "replace"))

    def _refuse(self) -> None:
        self._refused = True
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        _, body = self._admission.refuse()
        content = [_STATUS]
        for name, value in self.server_state.default_headers:
            content.extend((name, b": ", value, b"\r\n"))
        content.extend(
            (
                b"content-type: application/json\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\nretry-after: ",
                self._admission.retry_after_header,
                b"\r\n" if keep_alive else b"\r\nconnection: close\r\n",
                b"\r\n",
                body,
            )
        )
        self.transport.write(b"".join(content))
        if not keep_alive:
            self.transport.close()
            return
        self.on_response_complete()  # counts it, arms the keep-alive timeout
