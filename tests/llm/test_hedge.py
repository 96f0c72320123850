"""When a hedged copy goes: the percentile of recent latencies, after enough of them."""

from __future__ import annotations

import pytest

from legion.llm.hedge import HedgeSettings, Latencies


def test_no_hedge_before_enough_samples_then_the_percentile_with_a_floor() -> None:
    latencies = Latencies(HedgeSettings(percentile=90, min_delay=0.05, min_samples=10, window=50))
    for i in range(9):
        latencies.add(0.1 * (i + 1))
        assert latencies.hedge_delay() is None
    latencies.add(1.0)  # ten samples: 0.1 ... 1.0
    assert latencies.hedge_delay() == pytest.approx(0.9)
    fast = Latencies(HedgeSettings(percentile=50, min_delay=0.5, min_samples=1))
    fast.add(0.01)
    assert fast.hedge_delay() == 0.5  # never sooner than min_delay


def test_only_the_recent_window_counts() -> None:
    latencies = Latencies(HedgeSettings(percentile=50, min_delay=0, min_samples=5, window=20))
    for _ in range(20):
        latencies.add(10.0)  # an old slow spell
    for _ in range(20):
        latencies.add(0.2)
    assert latencies.hedge_delay() == pytest.approx(0.2)


def test_settings_are_checked() -> None:
    for bad in ({"percentile": 0}, {"percentile": 100}, {"min_delay": -1}, {"min_samples": 0}):
        with pytest.raises(ValueError):
            HedgeSettings(**bad)
