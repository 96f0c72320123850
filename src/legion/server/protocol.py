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

What one client may hold, so that it cannot hold what every other needs (`Openings`, one
per server, shared by its connections):

- a place among the requests in progress while its body does not come: at most
  `most_awaiting` requests of one credential (its ``Authorization`` header, else its
  address) wait for their bodies at once, one more is refused (503); and while every
  place is taken, a request whose body has been coming for more than `STALLED` seconds
  gives its place up (408). 130 requests whose bodies never came held all 128 places
  for 30 s, and every tenant was answered 503;
- a connection: past `Openings.most` connections (the open files the process may have,
  less what it needs besides), the ones waiting longest for a request's headers are
  closed, those waiting more than `STALLED` seconds, else the new one is; 20,500
  connections sending half a request each took every file the process could open, and
  no one was answered;
- memory, with headers: more than `MAX_HEAD` bytes of them get 431;
- time: a request's headers must come within ``header_seconds`` (408).

Every answer given here is JSON, as the application's are.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from legion.server.admission import ADMITTED, InProgressLimit, unbounded

MAX_HEAD = 64 * 1024
"""Bytes of a request's line and headers at most (431 past it)."""

STALLED = 1.0
"""Seconds after which a request's body that has not come whole, or a connection's
request whose headers have not, counts as stalled when places or connections run out."""

LINGER = 1.0
"""Seconds a connection closed with an answer reads what the client still sends."""

FILES_KEPT = 256
"""Open files kept for what the server needs besides connections (its store, logs)."""


def _answer(status: bytes, detail: str) -> bytes:
    """A JSON answer that closes the connection."""
    body = b'{"detail":"' + detail.encode() + b'"}'
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        )
    )


_STATUS = b"HTTP/1.1 503 Service Unavailable\r\n"
_TIMEOUT = _answer(b"408 Request Timeout", "the request's headers did not arrive in time")
_STALLED = _answer(
    b"408 Request Timeout", "the request's body did not arrive while others waited for its place"
)
_HEAD_TOO_LARGE = _answer(
    b"431 Request Header Fields Too Large",
    f"the request's line and headers are larger than {MAX_HEAD} bytes",
)
_INVALID = _answer(b"400 Bad Request", "invalid HTTP request")


def _own_share(most: int) -> bytes:
    return (
        b'{"detail":"this client\'s requests whose bodies have not come whole hold '
        + str(most).encode()
        + b' places, its share: send each body with its headers, or wait for them"}'
    )


def most_connections() -> int:
    """Connections a server takes at once: the open files the process may have, less
    `FILES_KEPT`."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(64, int(soft) - FILES_KEPT)


class Openings:
    """What one server's connections hold, shared by them (see the module's text)."""

    def __init__(self, most: int | None = None) -> None:
        self.most = most_connections() if most is None else most
        self.connections = 0
        # Connections waiting for a request's headers, and requests in progress waiting
        # for their bodies, each with when it began to wait (oldest first).
        self.idle: dict[SheddingProtocol, float] = {}
        self.awaiting: dict[SheddingProtocol, tuple[float, bytes]] = {}
        self.by_credential: Counter[bytes] = Counter()

    def most_awaiting(self, limit: int) -> int:
        """Requests of one credential that may wait for their bodies at once."""
        return max(8, limit // 2)

    def cut_idle(self, now: float) -> None:
        """Close connections waiting for headers longer than `STALLED`, oldest first,
        until there are fewer than `most`."""
        while self.connections > self.most and self.idle:
            protocol, since = next(iter(self.idle.items()))
            if now - since < STALLED:
                return
            protocol.cut(_TIMEOUT, linger=False)  # (its file let go now: it sends nothing)

    def cut_stalled(self, now: float) -> None:
        """Give the places of requests whose bodies have been coming longer than
        `STALLED` up (408): every place is taken."""
        while self.awaiting:
            protocol, (since, _) = next(iter(self.awaiting.items()))
            if now - since < STALLED:
                return
            protocol.cut(_STALLED)


class SheddingProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that answers a request over ``admission``'s bound itself, and
    bounds what one client holds (see the module's text). Without ``admission``, only
    the bounds: for a port that serves ``/metrics``."""

    def __init__(
        self,
        *args: Any,
        admission: InProgressLimit | None,
        openings: Openings,
        header_seconds: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._admission = admission
        self._openings = openings
        self._refused = False
        self._cut = False
        # A request's headers must arrive within this long of the connection (or of the
        # request's first byte): connections that sent part of them and waited were held
        # open for good, a file descriptor each.
        self._header_seconds = header_seconds
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._counted = False  # (in `Openings.connections`)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        openings = self._openings
        openings.connections += 1
        self._counted = True
        self._expect_headers()
        if openings.connections > openings.most:
            openings.cut_idle(self.loop.time())
            if openings.connections > openings.most:
                self.cut(b"")  # (no other to close: this one goes)

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        self._body_arrived()
        self._uncount()
        super().connection_lost(exc)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._openings.connections -= 1

    def cut(self, answer: bytes, *, linger: bool = True) -> None:
        """Close the connection now, with ``answer`` if it is not empty (it no longer
        counts among the server's connections: its file is being let go); ``linger``: read
        what the client still sends for `LINGER` seconds first."""
        self._headers_arrived()
        self._body_arrived()
        self._uncount()
        self._cut = True
        transport = self.transport
        if transport.is_closing():
            return
        if not answer or not linger:
            if answer:
                transport.write(answer)
            transport.close()
            return
        # Written, then the connection half-closed, what the client still sends read and
        # let go for a moment before the close: closed at once with its data unread, the
        # connection is reset, and the client may lose the answer before reading it.
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._cut:
            return
        awaiting = self._header_timer is not None  # (a request's headers, before this read)
        super().data_received(data)
        if awaiting and self._header_timer is not None and not self._cut:
            # (a read that began another request's headers, after a body, is not counted:
            # the body may be most of it)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self.cut(_HEAD_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        self.cut(_INVALID)

    def on_message_begin(self) -> None:
        self._refused = False
        self._expect_headers()
        super().on_message_begin()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._cut and not self.transport.is_closing() and self._header_timer is None:
            self._openings.idle[self] = self.loop.time()  # (kept alive: the next request's)

    def _expect_headers(self) -> None:
        self._openings.idle.setdefault(self, self.loop.time())
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_seconds, self._overdue)

    def _headers_arrived(self) -> None:
        self._openings.idle.pop(self, None)
        self._head_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _body_arrived(self) -> None:
        waited = self._openings.awaiting.pop(self, None)
        if waited is not None:
            credential = waited[1]
            counts = self._openings.by_credential
            counts[credential] -= 1
            if counts[credential] <= 0:
                del counts[credential]

    def _overdue(self) -> None:
        self._header_timer = None
        self.cut(_TIMEOUT)

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        admission = self._admission
        if admission is not None and self._sheddable():
            openings = self._openings
            if admission.full():
                openings.cut_stalled(self.loop.time())
                self._refuse(admission)
                return
            credential = self._credential()
            most = openings.most_awaiting(admission.limit)
            if openings.by_credential[credential] >= most:
                # Its own share is taken (not the server's: it is not counted as shed)
                self._refuse(admission, _own_share(most))
                return
            # Counted in progress now, not when its task first runs: under overload many
            # requests are read before the first of them runs, and all would pass.
            admitted = admission.admit()
            self.scope[ADMITTED] = admitted  # type: ignore[literal-required]
            try:
                super().on_headers_complete()
            except BaseException:  # no task will count it finished
                admission.release(admitted)
                raise
            # Waiting for its body until `on_message_complete` (at once for most).
            openings.awaiting[self] = (self.loop.time(), credential)
            openings.by_credential[credential] += 1
            return
        super().on_headers_complete()

    def _credential(self) -> bytes:
        for name, value in self.headers:
            if name == b"authorization":
                return value
        return (self.client[0] if self.client else "").encode()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_arrived()
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

    def _refuse(self, admission: InProgressLimit, body: bytes | None = None) -> None:
        """Answer 503 with ``Retry-After``: the server's bound reached (``body`` None: the
        refusal counts as shed), or this client's own share of it (``body``)."""
        self._refused = True
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        if body is None:
            _, body = admission.refuse()
        content = [_STATUS]
        for name, value in self.server_state.default_headers:
            content.extend((name, b": ", value, b"\r\n"))
        content.extend(
            (
                b"content-type: application/json\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\nretry-after: ",
                admission.retry_after_header,
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
