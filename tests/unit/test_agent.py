"""Agent definitions: signature reading, input mapping, options. No I/O."""

from __future__ import annotations

import functools
import random
from typing import Any, Optional

import pytest
from pydantic import BaseModel, ValidationError

import legion
from legion import ConfigError, InputError, RetryPolicy


@legion.agent
async def one(ctx: legion.Context, question: str) -> str:
    return question


@legion.agent(name="two-params", timeout=5, retries=1, concurrency=3)
async def two(ctx: legion.Context, a: int, b: int = 2) -> int:
    return a + b


def test_options_and_defaults() -> None:
    assert one.name == "one" and one.params == ("question",)
    assert one.options.retry.max_attempts == 4 and one.options.timeout == 300
    assert two.name == "two-params" and two.options.concurrency == 3
    assert two.options.retry.max_attempts == 2


def test_arguments_from_objects_and_bare_values() -> None:
    assert one.arguments("q") == {"question": "q"}
    assert one.arguments({"question": "q"}) == {"question": "q"}
    assert two.arguments({"a": 1}) == {"a": 1, "b": 2}
    assert two.arguments({"a": "3", "b": 4}) == {"a": 3, "b": 4}  # lax coercion, like pydantic


def test_arguments_that_do_not_fit_raise_input_error() -> None:
    with pytest.raises(InputError, match="takes a, b"):
        two.arguments(5)
    with pytest.raises(InputError, match="a: Field required"):
        two.arguments({"b": 1})
    with pytest.raises(InputError, match="question: Input should be a valid string"):
        one.arguments(5)


def test_an_object_read_as_arguments_hints_at_wrapping_it_only_where_it_could_fit() -> None:
    @legion.agent
    async def counted(ctx: legion.Context, n: int) -> int:
        return n

    @legion.agent
    async def keyed(ctx: legion.Context, data: dict[str, int]) -> int:
        return len(data)

    # {"n": "abc"}: wrapped again ({"n": {"n": "abc"}}) it could never be an int.
    with pytest.raises(InputError) as raised:
        counted.arguments({"n": "abc"})
    assert "valid integer" in str(raised.value) and "around it" not in str(raised.value)
    with pytest.raises(InputError) as wrapped:
        keyed.arguments({"data": 5})
    assert 'send {"data": ...} around it' in str(wrapped.value)


def test_a_value_for_an_agent_without_parameters_says_what_it_takes() -> None:
    @legion.agent
    async def none_(ctx: legion.Context) -> int:
        return 1

    assert none_.arguments({}) == {} and none_.arguments(None) == {}
    with pytest.raises(InputError) as raised:
        none_.arguments(5)
    assert str(raised.value) == "agent 'none_' takes no parameters; got int 5 (give {} or null)"


def test_an_extra_field_is_named_as_unknown() -> None:
    with pytest.raises(InputError) as one_extra:
        one.arguments({"question": "q", "id": 1})
    assert str(one_extra.value) == (
        "input does not fit agent 'one': unknown field(s) id (it takes question)"
    )
    with pytest.raises(InputError) as two_extra:
        two.arguments({"a": 1, "id": 1, "tag": "x"})
    assert str(two_extra.value) == (
        "input does not fit agent 'two-params': unknown field(s) id, tag (it takes a, b)"
    )


def test_an_input_of_many_unknown_fields_names_twenty_and_counts_the_rest() -> None:
    with pytest.raises(InputError) as raised:
        one.arguments({"question": "q", **{f"f{i}": i for i in range(150_000)}})
    message = str(raised.value)
    assert "f19, and" not in message and "f19 and 149980 more (it takes question)" in message
    assert "f20" not in message and len(raised.value.fields) == 20


def test_a_missing_field_is_named_as_missing() -> None:
    with pytest.raises(InputError) as wrong_name:
        one.arguments({"q": "what?"})
    assert str(wrong_name.value) == (
        "input does not fit agent 'one': unknown field(s) q (it takes question); "
        "missing field(s) question"
    )
    with pytest.raises(InputError) as empty:
        one.arguments({})
    assert str(empty.value) == "input does not fit agent 'one': missing field(s) question"
    with pytest.raises(InputError) as two_missing:
        two.arguments({"b": 1})
    assert str(two_missing.value) == (
        "input does not fit agent 'two-params': a: Field required (missing from the input)"
    )


def test_an_empty_object_takes_a_single_parameters_default() -> None:
    @legion.agent
    async def count(ctx: legion.Context, n: int = 1) -> int:
        return n

    @legion.agent
    async def maybe(ctx: legion.Context, doc: dict[str, int] | None = None) -> int:
        return len(doc or {})

    # (It failed with "input does not fit agent 'count': " and nothing after it.)
    assert count.arguments({}) == {"n": 1}
    assert count.arguments({"n": 3}) == {"n": 3} and count.arguments(4) == {"n": 4}
    assert maybe.arguments({}) == {"doc": {}}  # an object still goes to a dict parameter
    with pytest.raises(InputError, match=r"unknown field\(s\) m \(it takes n\)"):
        count.arguments({"m": 3})
    # The strict check of the HTTP API and `legion run` takes it too (it answered 422 with
    # "input does not fit agent 'count': " and nothing after it).
    count.check_json({}, b"{}")
    maybe.check_json({}, b"{}")

    @legion.agent
    async def note(ctx: legion.Context, write: str | None = None) -> str | None:
        return write

    note.check_json({}, b"{}")
    assert note.arguments({}) == {"write": None}
    with pytest.raises(InputError, match=r"unknown field\(s\) m \(it takes write\)"):
        note.check_json({"m": 3}, b'{"m": 3}')


def test_a_single_object_parameter_still_takes_objects_with_other_fields() -> None:
    @legion.agent
    async def raw(ctx: legion.Context, doc: dict[str, int]) -> int:
        return len(doc)

    assert raw.arguments({"x": 1, "y": 2}) == {"doc": {"x": 1, "y": 2}}
    with pytest.raises(InputError, match=r"doc\.x: Input should be a valid integer"):
        raw.arguments({"x": "a"})
    with pytest.raises(InputError, match=r"unknown field\(s\) id \(it takes doc\)"):
        raw.arguments({"doc": {"x": 1}, "id": 2})


def test_a_single_dict_parameter_takes_any_object() -> None:
    @legion.agent
    async def raw(ctx: legion.Context, doc: dict[str, int]) -> int:
        return len(doc)

    assert raw.arguments({"x": 1}) == {"doc": {"x": 1}}
    assert raw.arguments({"doc": {"x": 1}}) == {"doc": {"x": 1}}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(ctx): pass", "must be an `async def`"),
        # (it is one, as the message said it should be: what is wrong is that it yields)
        ("async def f(ctx):\n    yield 1", "is an async generator .* `return` it"),
        ("async def f(): pass", "context as its first parameter"),
        ("async def f(ctx, *args): pass", "plain or keyword-only"),
        # pydantic takes a name with a leading underscore for a private attribute, not a
        # field: every task of the agent died of a KeyError
        ("async def f(ctx, _): pass", r"parameter '_' starts with an underscore"),
        ("async def f(ctx, q: str, _hint: str = ''): pass", r"'_hint' starts with an underscore"),
        ("async def f(ctx, x: 'Missing'): pass", "cannot resolve the annotation"),
        ("async def f(x: int): pass", r"first parameter, 'x', is the context .* not an input of"),
        ("async def f(x: 'list[str]', y: int): pass", "not an input of type list"),
        ("async def f(doc: dict): pass", "the inputs come after it"),
        # a method decorated in its class: self was taken as the context, ctx as an input
        ("async def f(self, ctx, x: int): pass", "a method is an agent once bound"),
        # Accepted before, and every task then died after all its attempts:
        ("async def f(*, ctx, x: int): pass", r"'ctx', must be a plain first parameter"),
        ("async def f(ctx, model_config: dict): pass", "'model_config' cannot be an input field"),
        (
            "async def f(ctx, x: list['Nope']): pass",
            "cannot resolve a type .*'Nope' is not defined",
        ),
        ("class C: pass\nasync def f(ctx, c: C): pass", "'c' is of type C, which no JSON input"),
        ("class C: pass\nasync def f(ctx, n: int, c: list[C]): pass", r"of type list\[C\]"),
    ],
)
def test_bad_definitions_are_refused_at_decoration(source: str, message: str) -> None:
    scope: dict[str, object] = {}
    exec(compile(source, "<agent>", "exec", dont_inherit=True), scope)
    with pytest.raises(ConfigError, match=message):
        legion.agent(scope["f"])  # type: ignore[call-overload]


class Item(BaseModel):
    name: str


def test_a_type_named_in_quotes_within_a_type_is_looked_up_in_the_agents_module() -> None:
    """pydantic looked for ``Item`` in its own namespace: the model stayed incomplete, and
    every task died of pydantic's "not fully defined" error."""
    source = "async def f(ctx, items: list['Item'], first: Optional['Item'] = None): pass"
    scope: dict[str, object] = {"Item": Item, "Optional": Optional}
    exec(compile(source, "<agent>", "exec", dont_inherit=True), scope)
    items = legion.agent(scope["f"])  # type: ignore[call-overload]
    assert items.arguments({"items": [{"name": "a"}]}) == {"items": [Item(name="a")], "first": None}
    assert items.input_schema()["properties"]["items"]["type"] == "array"


def test_an_output_type_pydantic_cannot_check_is_refused_at_decoration() -> None:
    class Report:
        pass

    async def report(ctx: legion.Context, n: int) -> int:
        return n

    with pytest.raises(ConfigError, match=r"output=Report is not a type its output can be"):
        legion.agent(output=Report)(report)
    with pytest.raises(ConfigError) as refused:
        legion.agent(output=5)(report)
    assert "arbitrary_types_allowed" not in str(refused.value)  # (pydantic's own advice)


def test_the_backoff_of_a_late_attempt_is_its_ceiling_not_an_overflow() -> None:
    # 2.0 ** 1024 overflows: attempt 1,025 of an agent with many retries raised
    # OverflowError in the worker, and its task never ended.
    policy = RetryPolicy(retries=1_000_000, backoff=0.5, max_backoff=30.0)
    rng = random.Random(0)
    assert all(0.0 <= policy.delay(n, rng) <= 30.0 for n in (1, 1_025, 5_000, 1_000_000))
    assert RetryPolicy(retries=2000, backoff=0, max_backoff=0).delay(1_500) == 0.0
    with pytest.raises(ValueError, match="at most 1,000,000"):
        RetryPolicy(retries=1_000_001)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError):
        legion.agent(timeout=0)
    with pytest.raises(ConfigError):
        legion.agent(concurrency=0)
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": 123}, "an agent's name must be a non-empty str, got 123"),
        ({"name": ""}, "an agent's name must be a non-empty str"),
        # (accepted, and served, but no request could name it)
        ({"name": "y" * 201}, r"at most 200 characters.*\.\.\. has 201"),
        ({"name": "a\x00b"}, "without NUL"),
        ({"timeout": float("nan")}, "timeout must be a finite number of seconds > 0"),
        ({"timeout": "10"}, "timeout must be a finite number of seconds > 0, or None; got '10'"),
        ({"deadline": float("inf")}, "deadline must be a finite number"),
        ({"retries": 1.5}, "retries must be a whole number >= 0, got 1.5"),
        ({"retries": -1}, "retries must be a whole number >= 0"),
        ({"backoff": float("inf")}, "backoff must be a finite number of seconds >= 0"),
        ({"max_backoff": -1}, "max_backoff must be a finite number"),
        ({"retry": 5}, "retry takes a legion.RetryPolicy, got 5 .*retries="),
        ({"concurrency": 2.5}, "concurrency must be a whole number >= 1"),
        ({"max_tokens": 0}, "max_tokens must be a whole number >= 1"),
        ({"retries": 10**12}, "retries must be at most 1,000,000, got 1000000000000"),
        ({"max_cost": "5"}, "max_cost must be a positive number of USD, got '5'"),
        ({"max_cost": True}, "max_cost must be a positive number of USD, got True"),
    ],
)
def test_options_of_the_wrong_type_or_out_of_range_are_refused_at_decoration(
    options: dict[str, object], message: str
) -> None:
    """Each used to be taken, then failed deep inside a worker (a crash, a task whose retry
    never came, a float stored as an attempt count)."""
    with pytest.raises(ConfigError, match=message):
        legion.agent(**options)  # type: ignore[call-overload]


def test_an_agent_decorated_twice_or_a_function_without_a_name_is_refused() -> None:
    async def f(ctx: legion.Context, x: int) -> int:
        return x

    once = legion.agent(f)
    with pytest.raises(ConfigError, match="'f' is an agent already"):
        legion.agent(once)
    with pytest.raises(ConfigError, match="has no __name__: give the agent one with name="):
        legion.agent(functools.partial(f))
    assert legion.agent(name="g")(functools.partial(f)).name == "g"


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(retries=5, backoff=1.0, max_backoff=10.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        draws = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling  # the whole range is used, not a fixed delay


def test_plain_inputs_get_the_same_arguments_as_the_model_would_give() -> None:
    """Inputs of plain JSON types skip the model; every input gets what it would give."""

    @legion.agent
    async def single(ctx: legion.Context, n: int) -> None: ...

    @legion.agent
    async def many(ctx: legion.Context, text: str, n: int, x: Any, f: float) -> None: ...

    @legion.agent
    async def with_default(ctx: legion.Context, n: int, m: int = 3) -> None: ...

    inputs: list[tuple[legion.Agent, Any]] = [
        (single, 5),
        (single, "5"),
        (single, True),
        (single, {"n": 7}),
        (single, 2.0),
        (many, {"text": "t", "n": 1, "x": [1, {"a": None}], "f": 1.5}),
        (many, {"text": "t", "n": 1, "x": None, "f": 2}),
        (many, {"text": 3, "n": "1", "x": 0, "f": 1.0}),
        (with_default, {"n": 1}),
    ]
    for agent, value in inputs:
        as_fields = value if isinstance(value, dict) else {agent.params[0]: value}
        try:
            expected = agent._validator.model_validate(as_fields).__dict__
        except ValidationError:
            with pytest.raises(InputError):
                agent.arguments(value)
            continue
        got = agent.arguments(value)
        assert got == expected, (agent.name, value)
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
    with pytest.raises(InputError):
        single.arguments(1.5)
    with pytest.raises(InputError):
        many.arguments({"text": "t", "n": 1, "x": 0})  # f is missing


def test_an_object_read_as_the_arguments_of_one_parameter_says_so() -> None:
    """``{"data": 5}`` for ``data: dict`` is read as the arguments (its keys name the
    parameter), and refused: the message says how to give it as the value."""

    @legion.agent
    async def keep(ctx: legion.Context, data: dict[str, int]) -> int:
        return len(data)

    hint = r'read as its arguments: to give this one as the value of .data., send \{"data"'
    with pytest.raises(InputError, match=hint):
        keep.arguments({"data": 5})
    with pytest.raises(InputError, match=hint):
        keep.check_json({"data": 5}, b'{"data":5}')
    assert keep.arguments({"data": {"data": 5}}) == {"data": {"data": 5}}
