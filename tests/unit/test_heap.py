"""While workers run, the collector's young generation is collected less often; the
application's own thresholds are left as they are."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from legion import heap


@pytest.fixture(autouse=True)
def python_default() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*heap.DEFAULT)
    yield
    gc.set_threshold(*before)


def test_the_first_worker_raises_the_young_threshold_and_the_last_puts_it_back() -> None:
    heap.collect_less_often()
    heap.collect_less_often()
    assert gc.get_threshold() == (heap.YOUNG, 10, 10)
    heap.collect_as_before()
    assert gc.get_threshold() == (heap.YOUNG, 10, 10)  # one still runs
    heap.collect_as_before()
    assert gc.get_threshold() == heap.DEFAULT


def test_thresholds_the_application_set_are_kept() -> None:
    gc.set_threshold(50_000, 20, 20)
    heap.collect_less_often()
    assert gc.get_threshold() == (50_000, 20, 20)
    heap.collect_as_before()
    assert gc.get_threshold() == (50_000, 20, 20)


def test_thresholds_the_application_sets_while_workers_run_are_kept() -> None:
    heap.collect_less_often()
    gc.set_threshold(2_000, 10, 10)
    heap.collect_as_before()
    assert gc.get_threshold() == (2_000, 10, 10)
