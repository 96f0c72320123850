"""Every route but ``/healthz`` and ``/livez`` needs an API key.

Clients send ``Authorization: Bearer KEY``. Browsers may send the key as the password of
HTTP Basic authentication (any user name): that is how the dashboard is opened, and the
browser then sends it with every request of the page, event streams included. No key (or
one that is unknown or wrong) answers 401; a revoked key answers 403.

A request that changes something (any method but GET and HEAD) coming from a web page of
another origin is refused (403), so a page elsewhere cannot use credentials the browser
keeps for the dashboard.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from fastapi import Request

from legion.server import keys
from legion.store.base import KeyStore
from legion.store.types import ApiKey

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CACHE_LIMIT = 10_000
CHALLENGES = ('Bearer realm="legion"', 'Basic realm="legion", charset="UTF-8"')


class AuthError(Exception):
    """A request is refused: ``status`` is 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Authenticator:
    """Checks API keys against the store, trusting a checked key for ``cache_seconds``."""

    def __init__(
        self,
        store: KeyStore,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[ApiKey, float]] = {}

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The key an ``Authorization`` header carries, or `AuthError`."""
        token = credentials(authorization)
        if token is None:
            raise AuthError(401, "an API key is required: send Authorization: Bearer KEY")
        parsed = keys.parse(token)
        if parsed is None:
            raise AuthError(401, "that is not a legion API key (they look like lgn_..._...)")
        key_id, secret = parsed
        record = await self._record(key_id)
        if record is None or not keys.matches(record, secret):
            raise AuthError(401, "unknown API key")
        if record.revoked_at is not None:
            raise AuthError(403, "this API key was revoked")
        return record

    async def revoked(self, key: ApiKey) -> bool:
        """Whether ``key``, valid when a request began, was revoked (or removed) since: a
        stream that outlives its request asks (as of the cache, like a request would)."""
        record = await self._record(key.id)
        return record is None or record.revoked_at is not None

    async def _record(self, key_id: str) -> ApiKey | None:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[1] < self._cache_seconds:
            return cached[0]
        record = await self._store.api_key(key_id)
        if record is not None and self._cache_seconds > 0:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key_id] = (record, now)
        return record


def one_header(values: Sequence[str]) -> str | None:
    """The request's one ``Authorization`` header, or `AuthError`: of two, a proxy in front
    may read the last where legion would read the first."""
    if len(values) > 1:
        raise AuthError(401, f"send one Authorization header, not {len(values)}")
    return values[0] if values else None


def credentials(authorization: str | None) -> str | None:
    """The key in a ``Bearer`` header, or the password of a ``Basic`` one."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


def check_origin(request: Request) -> None:
    """Refuse a state-changing request sent by a page of another origin."""
    if request.method in _SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is None:
        return
    # The page's origin is the server's own by the Host the client sent, or by the one a
    # reverse proxy passed on as X-Forwarded-Host while sending the backend's own Host
    # (nginx's default): a page of another site cannot set that header on a request.
    hosts = {request.headers.get("host", "")}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip())
    if origin == "null" or urlsplit(origin).netloc not in hosts:
        raise AuthError(
            403,
            f"cross-origin requests may not change anything (Origin {origin!r} is not the "
            "server's Host; behind a reverse proxy, pass the Host header on, or set "
            "X-Forwarded-Host)",
        )
