"""The scaling policy on made-up snapshots and a made-up time (no store, no clock)."""

from __future__ import annotations

import dataclasses

import pytest

from legion.provision.policy import (
    Demand,
    PolicyState,
    RouteHeadroom,
    ScalingConfig,
    WorkerLoad,
    decide,
    parse_bounds,
)


def workers(n: int, *, in_flight: int = 1, healthy: bool = True) -> tuple[WorkerLoad, ...]:
    return tuple(WorkerLoad(f"w{i}", in_flight, healthy) for i in range(n))


def demand(**kw: object) -> Demand:
    base: dict[str, object] = dict(
        at=1000.0, queued=0, oldest_wait=0.0, running=0, workers=(), concurrency=4
    )
    base.update(kw)
    return Demand(**base)  # type: ignore[arg-type]


CONFIG = ScalingConfig(minimum=1, maximum=8, cooldown=60.0)


def test_backlog_asks_for_slots_up_to_the_maximum() -> None:
    d, s = decide(demand(queued=10, running=2, workers=workers(2)), CONFIG, PolicyState(2))
    assert (d.desired, d.wanted) == (3, 3)  # ceil(12 / 4)
    assert d.reason.startswith("scaling up to 3")
    assert s == PolicyState(3, None)
    d, _ = decide(demand(queued=100, workers=workers(4)), CONFIG, PolicyState(4))
    assert (d.desired, d.wanted) == (8, 25)
    assert d.reason.startswith("at the maximum of 8: the work asks for 25")


def test_throughput_term_clears_the_backlog_within_the_target() -> None:
    # 2 busy workers finishing 1 task/s each; 120 queued should clear in 30 s: 2 + 4.
    d, _ = decide(
        demand(queued=120, running=8, workers=workers(2), concurrency=1000, throughput=1.0),
        CONFIG,
        PolicyState(2),
    )
    assert (d.wanted, d.desired) == (6, 4)  # at most doubled in one step
    assert "1.0 tasks/s per worker" in d.reason


def test_an_old_backlog_asks_for_one_more_worker() -> None:
    d, _ = decide(
        demand(queued=1, oldest_wait=30.0, running=4, workers=workers(2), concurrency=1000),
        CONFIG,
        PolicyState(2),
    )
    assert d.desired == 3
    assert "waited 30 s" in d.reason


def test_a_saturated_route_holds_scale_up() -> None:
    routes = (RouteHeadroom("default", 0.99), RouteHeadroom("other", 0.2))
    d, s = decide(
        demand(queued=50, running=8, workers=workers(2), routes=routes), CONFIG, PolicyState(2)
    )
    assert d.wanted == 15
    assert d.desired == 2
    assert d.reason == "held at 2: route default is at 99 % of its limit"
    assert s.desired == 2


def test_a_429_pause_holds_scale_up() -> None:
    routes = (RouteHeadroom("default", 0.5, paused=True),)
    d, _ = decide(
        demand(queued=50, running=8, workers=workers(2), routes=routes), CONFIG, PolicyState(2)
    )
    assert d.desired == 2
    assert "pausing after a 429" in d.reason


def test_429s_on_a_route_whose_limit_is_unknown_hold_scale_up() -> None:
    # A provider without rate-limit headers, and no --rpm: its utilization is unknown,
    # its pauses short, and the fleet grew 1 -> 6 between them (470 429s for 200 tasks).
    routes = (RouteHeadroom("default", None, limited=3),)
    d, _ = decide(
        demand(queued=50, running=8, workers=workers(2), routes=routes), CONFIG, PolicyState(2)
    )
    assert d.desired == 2
    assert d.reason == "held at 2: route default answered 3 429s in the last seconds"


def test_a_route_below_saturation_does_not_hold() -> None:
    routes = (RouteHeadroom("default", 0.5), RouteHeadroom("unlimited", None))
    d, _ = decide(
        demand(queued=50, running=8, workers=workers(2), routes=routes), CONFIG, PolicyState(2)
    )
    assert d.desired == 4


def test_a_saturated_route_still_lets_it_scale_down_after_the_cool_down() -> None:
    routes = (RouteHeadroom("default", 1.0),)
    state = PolicyState(4)
    d, state = decide(demand(running=1, workers=workers(4), routes=routes), CONFIG, state)
    assert d.desired == 4
    d, state = decide(
        demand(at=1061.0, running=1, workers=workers(4), routes=routes), CONFIG, state
    )
    assert d.desired == 1


def test_scale_down_waits_for_the_cool_down() -> None:
    state = PolicyState(4)
    d, state = decide(demand(at=1000.0, workers=workers(4, in_flight=0)), CONFIG, state)
    assert d.desired == 4
    assert d.reason.startswith("held at 4 for the cool-down (0 of 60 s)")
    d, state = decide(demand(at=1059.0, workers=workers(4, in_flight=0)), CONFIG, state)
    assert d.desired == 4
    d, state = decide(demand(at=1060.0, workers=workers(4, in_flight=0)), CONFIG, state)
    assert d.desired == 1  # the minimum
    assert d.reason.startswith("at the minimum of 1")
    assert state == PolicyState(1, None)


def test_work_coming_back_restarts_the_cool_down() -> None:
    state = PolicyState(4)
    _, state = decide(demand(at=1000.0, workers=workers(4)), CONFIG, state)
    assert state.low_since == 1000.0
    _, state = decide(demand(at=1030.0, queued=16, workers=workers(4)), CONFIG, state)
    assert state == PolicyState(4, None)
    d, state = decide(demand(at=1070.0, workers=workers(4)), CONFIG, state)
    assert d.desired == 4  # the cool-down began again at 1070


def test_never_below_the_minimum_and_zero_allowed() -> None:
    d, _ = decide(demand(), ScalingConfig(minimum=0, maximum=3, cooldown=0), PolicyState(0))
    assert d.desired == 0
    d, _ = decide(demand(), ScalingConfig(minimum=2, maximum=3, cooldown=0), PolicyState(0))
    assert d.desired == 2


def test_an_idle_fleet_at_its_minimum_gives_one_reason_and_no_cool_down() -> None:
    # It said "at the minimum", then "held at 1 for the cool-down (0 of 60 s)" and so on,
    # a new log line a second, for a cool-down that could lower nothing.
    state = PolicyState(1)
    reasons = set()
    for at in range(1000, 1130, 1):
        d, state = decide(demand(at=float(at), workers=workers(1, in_flight=0)), CONFIG, state)
        assert d.desired == 1
        reasons.add(d.reason)
    assert len(reasons) == 1 and next(iter(reasons)).startswith("at the minimum of 1")
    assert state == PolicyState(1, None)


def test_unhealthy_workers_do_not_count_as_capacity() -> None:
    ws = workers(2) + workers(1, healthy=False)
    d, _ = decide(demand(queued=4, running=4, workers=ws), CONFIG, PolicyState(3))
    assert d.wanted == 3  # 2 for the work + 1 that leases nothing
    assert "1 unhealthy" in d.reason


def test_steady() -> None:
    d, _ = decide(demand(queued=0, running=8, workers=workers(2)), CONFIG, PolicyState(2))
    assert d.desired == 2
    assert d.reason.startswith("steady at 2")


@pytest.mark.parametrize(("text", "bounds"), [("1:8", (1, 8)), ("0:1", (0, 1)), ("3:3", (3, 3))])
def test_parse_bounds(text: str, bounds: tuple[int, int]) -> None:
    assert parse_bounds(text) == bounds


@pytest.mark.parametrize("text", ["8", "a:b", "4:2", "-1:3", "0:0", ""])
def test_parse_bounds_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--autoscale"):
        parse_bounds(text)


def test_config_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError):
        ScalingConfig(minimum=3, maximum=2)


def test_scale_up_at_most_doubles_and_waits_for_workers_to_start_and_report() -> None:
    d, s = decide(demand(queued=100), CONFIG, PolicyState(0))
    assert d.desired == 1  # from none: one
    d, s = decide(demand(queued=100), CONFIG, s)
    assert d.desired == 1
    assert d.reason.startswith("held at 1: waiting for 1 worker(s) to start and report")
    quiet = (WorkerLoad("w0", 0, True, reported=False),)
    d, s = decide(demand(queued=100, workers=quiet), CONFIG, s)
    assert d.desired == 1
    d, s = decide(demand(queued=100, workers=workers(1)), CONFIG, s)
    assert d.desired == 2
    d, s = decide(demand(queued=100, workers=workers(2)), CONFIG, s)
    assert d.desired == 4


def test_calls_queued_at_a_slowed_limiter_hold_scale_up() -> None:
    routes = (RouteHeadroom("default", 0.7, waiting=12),)
    d, _ = decide(
        demand(queued=50, running=8, workers=workers(2), routes=routes), CONFIG, PolicyState(2)
    )
    assert d.reason == "held at 2: route default is at 70 % of its limit, 12 calls waiting"
    idle = (RouteHeadroom("default", 0.3, waiting=1),)
    d, _ = decide(
        demand(queued=50, running=8, workers=workers(2), routes=idle), CONFIG, PolicyState(2)
    )
    assert d.desired == 4


def test_two_fleets_on_one_store_share_the_work_within_their_own_bounds() -> None:
    # 12 tasks at 4 slots a worker ask for 3 workers in all. Each autoscaler provisioned
    # all of them: two fleets ran 6. With the other fleet's 2 workers, this one runs 1.
    from legion.provision.autoscaler import fleet_decision

    mine = (WorkerLoad("mine", 4, True),)
    theirs = (WorkerLoad("a", 4, True), WorkerLoad("b", 4, True))
    work = demand(running=12, workers=mine + theirs)
    bounds = ScalingConfig(minimum=1, maximum=4, cooldown=60.0)
    d, _ = fleet_decision(work, bounds, PolicyState(desired=3), others=2)
    assert (d.desired, d.running, d.wanted) == (1, 1, 1)
    assert "of them 2 in other fleets" in d.reason
    # Its bounds are its own: MAX workers of its own, however many the others run.
    more = demand(running=40, queued=40, workers=mine + theirs)
    d, _ = fleet_decision(more, bounds, PolicyState(desired=3), others=2)
    assert (d.desired, d.wanted) == (4, 18)  # (20 in all: 6 at most, doubling the 3 running)
    # Alone on the store: as before.
    assert fleet_decision(work, bounds, PolicyState(desired=3), others=0) == decide(
        work, bounds, PolicyState(desired=3)
    )


def test_a_worker_that_cannot_start_just_after_its_agent_file_changed_is_not_final() -> None:
    """A deploy that moves the agent's file: the worker exits 6 (changed), the next
    cannot load the file yet (2), which stopped every supervisor's fleet for good."""
    from legion.provision.exits import DEPLOY_GRACE, EXIT_BUDGET, EXIT_FINAL, final

    assert final(EXIT_FINAL, None, 100.0) and final(EXIT_BUDGET, 99.0, 100.0)
    assert not final(EXIT_FINAL, 99.0, 100.0)  # (a second after a change)
    assert final(EXIT_FINAL, 99.0, 100.0 + DEPLOY_GRACE)
    assert not final(0, None, 1.0) and not final(3, None, 1.0)


def test_at_the_maximum_the_reason_is_the_maximum_not_workers_starting() -> None:
    # "held at 6: waiting for 2 worker(s) to start and report" stayed for 16 s after all
    # six ran: at the maximum, nothing that starts changes the decision.
    at_max = PolicyState(CONFIG.maximum or 0)
    d, _ = decide(demand(queued=500, running=8, workers=workers(2)), CONFIG, at_max)
    assert d.desired == CONFIG.maximum
    assert d.reason.startswith(f"at the maximum of {CONFIG.maximum}: the work asks for")


def test_a_fleets_share_lowered_by_the_others_growing_waits_for_the_cool_down() -> None:
    # Each fleet's start lowered the other's share at once: two fleets started and
    # stopped 40 workers in 100 s, and never reached what the work asked for.
    from legion.provision.autoscaler import fleet_decision

    bounds = ScalingConfig(minimum=1, maximum=4, cooldown=15.0)
    mine = tuple(WorkerLoad(f"m{i}", 4, True) for i in range(3))
    theirs = tuple(WorkerLoad(f"t{i}", 4, True) for i in range(3))
    # 5 workers' work, decided when the others ran 2; one of theirs started since
    work = demand(running=20, workers=mine + theirs)
    state = PolicyState(desired=5)
    d, state = fleet_decision(work, bounds, state, others=3, mine=3)
    assert d.desired == 3 and "held at 3 for the cool-down" in d.reason
    later = dataclasses.replace(work, at=work.at + 10)
    d, state = fleet_decision(later, bounds, state, others=3, mine=3)
    assert d.desired == 3
    done = dataclasses.replace(work, at=work.at + 16)
    d, state = fleet_decision(done, bounds, state, others=3, mine=3)
    assert d.desired < 3 and state.share_low_since is None
    # The others drained to 1 while the work asks for nothing: not this fleet's to replace.
    idle = demand(running=0, workers=mine[:2] + theirs[:1], at=work.at + 40)
    d, state = fleet_decision(idle, bounds, PolicyState(desired=5), others=1, mine=2)
    assert d.desired <= 2, d
    # Its own minimum it keeps, beside others, at idle: a new supervisor, or one whose
    # worker crashed.
    for own in (0, 1):
        d, _ = fleet_decision(
            idle, ScalingConfig(minimum=2, maximum=8, cooldown=15.0), PolicyState(), 1, own
        )
        assert d.desired == 2, (own, d)
