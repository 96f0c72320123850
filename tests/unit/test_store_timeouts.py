"""The PostgreSQL store's bounds derive from the lease and stay below it."""

from __future__ import annotations

import pytest

from legion.store.timeouts import StoreTimeouts


@pytest.mark.parametrize("lease", [1.0, 4.0, 30.0, 120.0])
def test_every_bound_sits_below_the_lease(lease: float) -> None:
    t = StoreTimeouts.for_lease(lease)
    # A heartbeat that hangs a whole call and is retried still lands within the lease.
    heartbeat = min(lease / 3, 5.0)
    assert t.call + heartbeat <= lease or t.call == 1.0
    assert t.keepalives_idle + t.keepalives_interval * t.keepalives_count <= max(lease, 5)
    assert 2 <= t.connect <= 10


def test_the_default_lease_gives_ten_second_calls() -> None:
    t = StoreTimeouts.for_lease()
    assert t.call == 10.0
    assert t.libpq()["tcp_user_timeout"] == "10000"
    assert t.server_options().startswith(
        "-c statement_timeout=10000 -c idle_in_transaction_session_timeout=10000 "
    )
    assert "-c tcp_user_timeout=10000" in t.server_options()


def test_a_call_timeout_overrides_the_lease() -> None:
    assert StoreTimeouts.for_lease(30).with_call(60).call == 60
    with pytest.raises(ValueError):
        StoreTimeouts.for_lease(30).with_call(0)
    with pytest.raises(ValueError):
        StoreTimeouts.for_lease(0)
