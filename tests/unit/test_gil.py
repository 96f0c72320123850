"""While workers run, the GIL goes to a waiting thread (the SQLite store's) sooner; the
application's own switch interval is left as it is."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from legion import gil


@pytest.fixture(autouse=True)
def python_default() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(gil.DEFAULT)
    yield
    sys.setswitchinterval(before)


def test_the_first_worker_shortens_the_interval_and_the_last_puts_it_back() -> None:
    gil.hand_over_sooner()
    gil.hand_over_sooner()
    assert sys.getswitchinterval() == pytest.approx(gil.INTERVAL)
    gil.hand_over_as_before()
    assert sys.getswitchinterval() == pytest.approx(gil.INTERVAL)  # one still runs
    gil.hand_over_as_before()
    assert sys.getswitchinterval() == pytest.approx(gil.DEFAULT)


def test_an_interval_the_application_set_is_kept() -> None:
    sys.setswitchinterval(0.001)
    gil.hand_over_sooner()
    assert sys.getswitchinterval() == pytest.approx(0.001)
    gil.hand_over_as_before()
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_an_interval_the_application_sets_while_workers_run_is_kept() -> None:
    gil.hand_over_sooner()
    sys.setswitchinterval(0.002)
    gil.hand_over_as_before()
    assert sys.getswitchinterval() == pytest.approx(0.002)
