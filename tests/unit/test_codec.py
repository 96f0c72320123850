"""``legion.codec``: what everything stored is encoded with."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import pytest

from legion import codec
from legion.errors import OutputError


def test_values_round_trip_and_what_json_cannot_hold_is_refused() -> None:
    value = {"a": [1, 2.5, "é"], "b": None, "c": {"d": True}}
    assert codec.loads(codec.dumps(value)) == value
    assert codec.loads(codec.dumps({1: "x"})) == {"1": "x"}
    assert codec.loads(codec.dumps((1, 2))) == [1, 2]
    with pytest.raises(OutputError, match="JSON"):
        codec.dumps(object())
    with pytest.raises(OutputError):
        codec.dumps({"x": object()})


def test_a_value_json_cannot_hold_says_what_to_do() -> None:
    # orjson's own words ("Integer exceeds 64-bit range", "Recursion limit reached")
    with pytest.raises(OutputError, match=r"integer past 64 bits \(store it as text"):
        codec.dumps({"n": 2**70})
    deep: list[object] = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(OutputError, match="nests deeper than 254 levels"):
        codec.dumps(deep)


def test_a_short_encoding_holds_about_its_own_size() -> None:
    # Inputs and step results are held while their instance runs: 10,000 in flight must
    # not hold 10,000 encoder buffers (orjson rounds each up to 4 KB at the least).
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [codec.dumps({"i": i}) for i in range(2000)]
        per_value = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_value < 200, f"{per_value:.0f} bytes held per 10-byte encoding"
    assert kept[7] == b'{"i":7}'


def test_a_long_encoding_is_the_same_bytes() -> None:
    big = {"text": "x" * 200_000}
    assert codec.loads(codec.dumps(big)) == big


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (float("nan"), "value is"),
        ({"scores": [0.5, float("inf")]}, "value['scores'][1]"),
        ((1, {"x": -float("inf")}), "value[1]['x']"),
        ({"s": {float("nan")}}, "value['s'] (an item)"),
    ],
)
def test_nan_and_infinity_are_refused_not_stored_as_null(value: object, where: str) -> None:
    # orjson writes them as null: a step would answer None when replayed, NaN when run.
    with pytest.raises(OutputError, match="NaN or infinite") as raised:
        codec.dumps(value)
    assert where in str(raised.value)


def test_nan_in_a_dataclass_or_a_model_is_refused_and_null_itself_is_kept() -> None:
    import dataclasses

    import pydantic

    @dataclasses.dataclass
    class Point:
        x: float

    class Reading(pydantic.BaseModel):
        value: float

    with pytest.raises(OutputError, match=r"value\[0\]\.x"):
        codec.dumps([Point(float("nan"))])
    with pytest.raises(OutputError, match=r"value\.value"):
        codec.dumps(Reading(value=float("inf")))
    assert codec.loads(codec.dumps({"a": None, "b": "null", "c": 1.5})) == {
        "a": None,
        "b": "null",
        "c": 1.5,
    }


@pytest.mark.parametrize(
    "text",
    [b'{"id": 123456789012345678901234567890}', b"18446744073709551616", b"[-9223372036854775809]"],
)
def test_an_integer_past_64_bits_from_outside_is_refused_not_read_as_a_float(
    text: bytes,
) -> None:
    # orjson reads it as a float: 2**70 would run as 1.1805916207174113e+21.
    assert isinstance(codec.loads(text), float | dict | list)
    with pytest.raises(codec.JSONDecodeError, match="past 64 bits"):
        codec.loads_given(text)


def test_64_bit_integers_and_long_digit_strings_from_outside_are_read_as_they_are() -> None:
    text = b'{"a": 18446744073709551615, "b": -9223372036854775808, "c": "12345678901234567890123"}'
    assert codec.loads_given(text) == {
        "a": 2**64 - 1,
        "b": -(2**63),
        "c": "12345678901234567890123",
    }


def test_a_model_whose_own_encoding_fails_says_why() -> None:
    from pydantic import BaseModel

    class Blob(BaseModel):
        data: bytes

    with pytest.raises(OutputError, match=r"Blob \(UnicodeDecodeError: 'utf-8' codec can't"):
        codec.dumps(Blob(data=b"\x89PNG"))
    assert codec.dumps(Blob(data=b"text")) == b'{"data":"text"}'


def test_a_set_is_encoded_in_one_order_whatever_the_process() -> None:
    # A set of strings came out in the order of the process's salted hashes: the same
    # run gave ["e","c","d","a","b"] and then ["b","e","a","d","c"] in its output file.
    script = "from legion import codec; print(codec.dumps({'e', 'c', 'd', 'a', 'b'}).decode())"
    seen = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert seen == {'["a","b","c","d","e"]'}
    assert set(codec.loads(codec.dumps({1, "a"}))) == {1, "a"}  # (items that do not compare)


def test_encoding_imports_no_numpy_of_its_own_and_encodes_its_arrays_once_imported() -> None:
    # With numpy installed but not imported, a value orjson cannot encode (a function
    # among a step's inputs, fingerprinted for the advice) made orjson import numpy: ~0.2 s
    # on the event loop, reported as the agent's own import.
    script = (
        "import sys\n"
        "from legion import codec\n"
        "try:\n"
        "    codec.same_value_hash([print, 1])\n"
        "except codec.OutputError:\n"
        "    pass\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
        "import numpy\n"
        "assert codec.dumps({'a': numpy.arange(3)}) == b'{\"a\":[0,1,2]}'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
