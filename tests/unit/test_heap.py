"""While workers run, the collector's young generation is collected less often; the
application's own thresholds are left as they are."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from legion import heap


@pytest.fixture(autouse=True)
def python_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(heap.DEFAULT, 10, 10)
    monkeypatch.setattr(heap._YOUNG, "_users", 0)  # (no worker left over by another test)
    monkeypatch.setattr(heap._YOUNG, "_ours", False)
    yield
    gc.set_threshold(*before)


def test_the_first_worker_raises_the_young_threshold_and_the_last_puts_it_back() -> None:
    heap.collect_less_often()
    heap.collect_less_often()
    assert gc.get_threshold()[0] == heap.YOUNG
    heap.collect_as_before()
    assert gc.get_threshold()[0] == heap.YOUNG  # one still runs
    heap.collect_as_before()
    assert gc.get_threshold()[0] == heap.DEFAULT


def test_the_older_generations_thresholds_are_left_as_they_are() -> None:
    gc.set_threshold(heap.DEFAULT, 20, 30)
    older = gc.get_threshold()[1:]
    heap.collect_less_often()
    assert gc.get_threshold() == (heap.YOUNG, *older)
    heap.collect_as_before()
    assert gc.get_threshold() == (heap.DEFAULT, *older)


def test_a_threshold_the_application_set_is_kept() -> None:
    gc.set_threshold(50_000, 20, 20)
    heap.collect_less_often()
    assert gc.get_threshold()[0] == 50_000
    heap.collect_as_before()
    assert gc.get_threshold()[0] == 50_000


def test_a_threshold_the_application_sets_while_workers_run_is_kept() -> None:
    heap.collect_less_often()
    gc.set_threshold(2_000, 10, 10)
    heap.collect_as_before()
    assert gc.get_threshold()[0] == 2_000


@pytest.fixture
def nothing_frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    frozen_before = gc.get_freeze_count()
    gc.unfreeze()
    monkeypatch.setattr(heap, "_users", 0)
    monkeypatch.setattr(heap, "_froze", False, raising=False)
    yield
    gc.unfreeze()
    if frozen_before:
        gc.freeze()


@pytest.mark.usefixtures("nothing_frozen")
def test_the_first_worker_freezes_and_the_last_unfreezes() -> None:
    heap.settle()
    heap.settle()
    assert gc.get_freeze_count() > 0
    heap.unsettle()
    assert gc.get_freeze_count() > 0  # one still runs
    heap.unsettle()
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("nothing_frozen")
def test_what_the_application_froze_stays_frozen() -> None:
    # A closed Runtime unfroze the application's own frozen objects.
    kept = [[n] for n in range(1000)]  # (lists: objects the collector tracks)
    gc.freeze()
    frozen = gc.get_freeze_count()
    heap.settle()
    heap.unsettle()
    # (frozen objects freed meanwhile leave the count: a few, not all of them)
    assert gc.get_freeze_count() > frozen - 500
    del kept
