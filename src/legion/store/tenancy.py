"""Tenants in the store: whose a task is, and idempotency keys scoped to their tenant.

A key of the `DEFAULT_TENANT` is stored as given (stores made before tenants keep
their keys); another tenant's is stored as ``\\x1f<tenant>\\x1f<key>``, so the same key in
two tenants names two tasks. A key may not itself start with ``\\x1f``.

A keyed task also keeps the fingerprint of what was submitted (its agent and input): the
same key sent again with something else is an `legion.errors.IdempotencyConflict`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

from legion import codec
from legion.errors import ConfigError, IdempotencyConflict
from legion.task import NewTask

DEFAULT_TENANT = "default"
_MARK = "\x1f"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TENANT_PATTERN = _TENANT.pattern


def check_tenant(name: str) -> str:
    """``name`` if it can name a tenant, else `ConfigError`."""
    if not _TENANT.match(name):
        raise ConfigError(
            f"bad tenant name {name!r}: 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def scoped_key(tenant: str, key: str | None, what: str = "an idempotency key") -> str | None:
    """The stored form of ``tenant``'s idempotency key ``key`` (or session: ``what``)."""
    if key is None:
        return None
    if key.startswith(_MARK):
        raise ConfigError(f"{what} may not start with the character U+001F")
    if tenant == DEFAULT_TENANT:
        return key
    return f"{_MARK}{tenant}{_MARK}{key}"


def tenant_of(stored: str) -> str:
    """The tenant of a stored key or session (see `scoped_key`)."""
    if not stored.startswith(_MARK):
        return DEFAULT_TENANT
    return stored.split(_MARK, 2)[1]


def unscoped_key(stored: str | None) -> str | None:
    """The key as its tenant sent it, from its stored form."""
    if stored is None or not stored.startswith(_MARK):
        return stored
    return stored.split(_MARK, 2)[2]


def fingerprint(agent: str, input: bytes) -> bytes:
    """What a keyed submission is compared by: SHA-256 of the agent and the input's JSON,
    its objects' keys in order (`legion.codec.canonical`: an equal input sent with its
    keys in another order is the same input)."""
    return _sha256(agent, codec.canonical(input))


def matches(stored: bytes | None, agent: str, input: bytes) -> bool:
    """Whether a task stored with fingerprint ``stored`` was submitted with this agent and
    input: by its fingerprint, or by the one of the input as sent, keys in their order
    (what a task stored before fingerprints were canonical holds). A task stored before
    fingerprints were kept has none and matches anything."""
    return stored is None or stored in (fingerprint(agent, input), _sha256(agent, input))


def _sha256(agent: str, input: bytes) -> bytes:
    h = hashlib.sha256(agent.encode("utf-8"))
    h.update(b"\x00")
    h.update(input)
    return h.digest()


class KeyedTasks:
    """The stored keys and fingerprints of tasks about to be submitted together.

    Made before the store is touched: the same key twice in one submission with different
    agents or inputs is refused at once (`IdempotencyConflict`).
    """

    __slots__ = ("as_sent", "hashes", "keys", "sent")

    def __init__(self, tasks: Sequence[NewTask]) -> None:
        self.sent = [t.key for t in tasks]
        self.keys = [scoped_key(t.tenant, t.key) for t in tasks]
        self.hashes = [
            fingerprint(t.agent, t.input) if k is not None else None
            for t, k in zip(tasks, self.keys, strict=True)
        ]
        # The fingerprints of the inputs as sent, keys in their order: what a task stored
        # before fingerprints were canonical holds (compared too, never stored).
        self.as_sent = [
            _sha256(t.agent, t.input) if k is not None else None
            for t, k in zip(tasks, self.keys, strict=True)
        ]
        first: dict[str, bytes | None] = {}
        clash = [
            sent
            for sent, k, h in zip(self.sent, self.keys, self.hashes, strict=True)
            if k is not None and first.setdefault(k, h) != h
        ]
        if clash:
            raise IdempotencyConflict(tuple(dict.fromkeys(s for s in clash if s is not None)))

    def check(self, stored: Mapping[str, bytes | None]) -> None:
        """Refuse the submission if a key in ``stored`` (stored key → fingerprint) was
        submitted with something else. A task stored before fingerprints were kept has
        none and matches anything."""
        clash = [
            sent
            for sent, k, h, raw in zip(self.sent, self.keys, self.hashes, self.as_sent, strict=True)
            if k is not None and stored.get(k) is not None and stored[k] not in (h, raw)
        ]
        if clash:
            raise IdempotencyConflict(tuple(dict.fromkeys(s for s in clash if s is not None)))
