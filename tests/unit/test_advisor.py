"""The sequential-await advisor fingerprints only the steps that can be in a report."""

from __future__ import annotations

from legion.diagnostics.advisor import (
    MIN_SAVING,
    NO_PRINTS,
    StepTrace,
    advise,
    fingerprints,
    step_prints,
)


def _trace(
    key: str, started: float, seconds: float, inputs: tuple[object, ...], out: object
) -> StepTrace:
    return StepTrace(
        key,
        None,
        started,
        started + seconds,
        step_prints(seconds, inputs),
        step_prints(seconds, (out,)),
    )


def test_a_step_too_short_to_be_worth_a_gather_is_not_fingerprinted() -> None:
    assert step_prints(MIN_SAVING / 2, ("a prompt", 3)) is NO_PRINTS
    assert step_prints(MIN_SAVING, ("a prompt", 3)) == fingerprints(("a prompt", 3))


def test_long_independent_steps_are_reported_and_dependent_ones_are_not() -> None:
    long = MIN_SAVING * 4
    first = _trace("search", 0.0, long, ("q",), "found text")
    independent = _trace("other", long, long, ("unrelated",), "x")
    dependent = _trace("summary", long, long, ("summarize: found text",), "y")
    assert len(advise("a", [first, independent])) == 1
    assert advise("a", [first, dependent]) == []


def test_a_pair_with_a_short_step_is_never_reported() -> None:
    long, short = MIN_SAVING * 4, MIN_SAVING / 4
    for a, b in ((long, short), (short, long), (short, short)):
        first = _trace("one", 0.0, a, ("q",), "r")
        second = _trace("two", a, b, ("unrelated",), "s")
        assert advise("a", [first, second]) == []


def test_a_result_kept_as_its_recorded_json_is_fingerprinted_when_a_report_asks() -> None:
    long = MIN_SAVING * 4
    first = StepTrace("search", None, 0.0, long, NO_PRINTS, NO_PRINTS, result=b'["found text"]')
    assert first.output_prints() == fingerprints((["found text"],))
    dependent = _trace("summary", long, long, ("summarize: found text",), "y")
    independent = _trace("other", long, long, ("unrelated",), "x")
    assert advise("a", [first, dependent]) == []
    assert len(advise("a", [first, independent])) == 1
