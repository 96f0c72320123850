from __future__ import annotations

from legion.stats import LatencySample


def test_quantiles_are_exact_below_the_sample_size() -> None:
    s = LatencySample(size=1000)
    for v in range(101):
        s.add(float(v))
    assert (s.quantile(0.5), s.quantile(0.95), s.quantile(1.0)) == (50.0, 95.0, 100.0)
    assert LatencySample().quantile(0.5) is None


def test_the_reservoir_stays_bounded_and_representative() -> None:
    s = LatencySample(size=500, seed=1)
    for v in range(100_000):
        s.add(float(v))
    median = s.quantile(0.5)
    assert median is not None and 40_000 < median < 60_000
