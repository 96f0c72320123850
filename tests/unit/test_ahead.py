"""How many leases a worker holds ahead (`legion.run.ahead.Ahead`): twice the most
instances that ended during one of the last lease calls, within its cap."""

from __future__ import annotations

from legion.run.ahead import WINDOW, Ahead


def lease_call(ahead: Ahead, ends_during: int) -> None:
    ahead.lease_sent()
    for _ in range(ends_during):
        ahead.ended()
    ahead.lease_answered()


def test_nothing_is_held_while_no_instance_ends_during_a_lease_call() -> None:
    ahead = Ahead(cap=200)
    for _ in range(3 * WINDOW):
        ahead.ended()  # (ends between lease calls do not count)
        lease_call(ahead, 0)
    assert ahead.target == 0 and ahead.wanted() == 0


def test_the_hold_covers_twice_the_ends_seen_during_a_lease_call_up_to_the_cap() -> None:
    ahead = Ahead(cap=200)
    lease_call(ahead, 30)
    assert ahead.target == 60 and ahead.wanted() == 60
    lease_call(ahead, 500)
    assert ahead.target == 200


def test_the_hold_lasts_through_a_window_of_quiet_calls_then_goes() -> None:
    ahead = Ahead(cap=200)
    lease_call(ahead, 40)
    for _ in range(WINDOW - 1):  # bursts: quiet calls between two
        lease_call(ahead, 0)
        assert ahead.target == 80
    lease_call(ahead, 0)
    assert ahead.target == 0


def test_a_worker_that_leases_nothing_ahead_holds_nothing() -> None:
    ahead = Ahead(cap=0)
    lease_call(ahead, 1000)
    assert ahead.target == 0
