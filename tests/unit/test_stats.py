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


def test_every_value_is_as_likely_to_be_kept_however_late_it_came() -> None:
    """The sample skips ahead past its size (it draws no random number for the values it
    skips), and stays uniform: each tenth of the stream holds about a tenth of it."""
    s = LatencySample(size=1000, seed=3)
    n = 200_000
    for v in range(n):
        s.add(float(v))
    kept = s._values
    assert len(kept) == 1000 and len(set(kept)) == 1000
    tenths = [0] * 10
    for latency in kept:
        tenths[int(latency * 10 // n)] += 1
    assert all(60 <= t <= 140 for t in tenths), tenths  # ~100 each, sd ~9.5
