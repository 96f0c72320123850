"""API keys of the HTTP API: made, parsed and checked here; kept by the store.

A key reads ``lgn_<id>_<secret>``: ``id`` is 12 hex digits, public (``legion keys list``
shows it and the store looks the key up by it); ``secret`` is 32 random bytes from
`secrets`, base64url-encoded. The store keeps only a random 16-byte salt and
``sha256(salt || secret)``; checking a key compares digests in constant time.

Why SHA-256 and not a slow password hash (bcrypt, scrypt, argon2): a slow hash protects
*low-entropy* secrets, which a thief of the digests could guess one candidate at a time.
A 256-bit random secret cannot be guessed at any speed, so slowing each guess down adds
no protection, while it would cost every API request tens of milliseconds of CPU. This
is how API keys are commonly stored; the salt keeps equal secrets from having equal
digests and rules out precomputed tables.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from legion.store.tenancy import DEFAULT_TENANT, check_tenant
from legion.store.types import ApiKey

PREFIX = "lgn"
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})$")
_ID = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: ``token`` is the whole key, shown once and never stored."""

    token: str
    record: ApiKey


def new_key(name: str, now: float, *, tenant: str = DEFAULT_TENANT, admin: bool = False) -> NewKey:
    """Make a key named ``name`` (what or who it is for) of ``tenant``; an ``admin`` key
    sees every tenant's tasks."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = ApiKey(
        id=key_id,
        name=name,
        salt=salt,
        digest=digest(salt, secret),
        created_at=now,
        tenant=check_tenant(tenant),
        scope="admin" if admin else "tenant",
    )
    return NewKey(f"{PREFIX}_{key_id}_{secret}", record)


def parse(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else ``None``."""
    m = _KEY.match(token)
    return (m.group(1), m.group(2)) if m else None


def key_id(text: str) -> str | None:
    """The id named by ``text``: a key id, or a whole key."""
    if _ID.match(text):
        return text
    parsed = parse(text)
    return parsed[0] if parsed else None


def digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


def matches(record: ApiKey, secret: str) -> bool:
    """Whether ``secret`` is the secret of ``record`` (constant time)."""
    return hmac.compare_digest(digest(record.salt, secret), record.digest)
