"""API keys: their form, their digest, and the authenticator's cache (no sockets)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from legion.server.auth import Authenticator, AuthError, credentials
from legion.server.keys import digest, key_id, matches, new_key, parse
from legion.store import SQLiteStore


def test_a_new_key_is_random_and_only_its_digest_is_kept() -> None:
    a, b = new_key("a", 1.0), new_key("b", 1.0)
    assert a.token != b.token and a.record.id != b.record.id
    parsed = parse(a.token)
    assert parsed is not None and parsed[0] == a.record.id
    assert parsed[1] not in repr(a.record)  # the secret is not in what is stored
    assert a.record.digest == digest(a.record.salt, parsed[1])
    assert len(a.record.salt) == 16 and len(a.record.digest) == 32
    assert matches(a.record, parsed[1]) and not matches(a.record, parsed[1][:-1] + "x")


@pytest.mark.parametrize(
    "token",
    ["", "lgn_", "lgn_abc_def", "xyz_0123456789ab_" + "a" * 43, "lgn_0123456789ab_" + "a" * 42],
)
def test_malformed_keys_do_not_parse(token: str) -> None:
    assert parse(token) is None


def test_key_id_accepts_an_id_or_a_whole_key() -> None:
    key = new_key("k", 1.0)
    assert key_id(key.record.id) == key.record.id
    assert key_id(key.token) == key.record.id
    assert key_id("nope") is None


def test_credentials_come_from_bearer_or_basic() -> None:
    basic = base64.b64encode(b"me:lgn_x").decode()
    assert credentials("Bearer lgn_x") == "lgn_x"
    assert credentials("bearer   lgn_x ") == "lgn_x"
    assert credentials(f"Basic {basic}") == "lgn_x"
    assert credentials("Basic " + base64.b64encode(b"me:").decode()) is None
    assert credentials(None) is None and credentials("Digest x") is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_checked_key_is_trusted_for_the_cache_period(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "k.db")
    await store.open()
    try:
        key = new_key("k", time.time())
        await store.add_api_key(key.record)
        clock = Clock()
        auth = Authenticator(store, cache_seconds=5, clock=clock)
        header = f"Bearer {key.token}"
        assert (await auth.authenticate(header)).id == key.record.id
        await store.revoke_api_key(key.record.id, time.time())
        clock.now = 4.9
        assert (await auth.authenticate(header)).id == key.record.id  # still cached
        clock.now = 5.0
        with pytest.raises(AuthError) as refused:
            await auth.authenticate(header)
        assert refused.value.status == 403
        with pytest.raises(AuthError) as missing:
            await auth.authenticate(None)
        assert missing.value.status == 401
    finally:
        await store.aclose()
