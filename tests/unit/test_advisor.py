"""The sequential-await advisor: what it fingerprints, and what it takes for a dependency;
and which files are the agent's code."""

from __future__ import annotations

import orjson

from legion.diagnostics.advisor import (
    MIN_SAVING,
    NO_PRINTS,
    StepTrace,
    advise,
    fingerprints,
    step_prints,
)
from legion.diagnostics.report import is_library_file
from legion.llm.types import ChatResponse, ToolCall


def _trace(
    key: str, started: float, seconds: float, inputs: tuple[object, ...], out: object
) -> StepTrace:
    return StepTrace(
        key,
        None,
        started,
        started + seconds,
        step_prints(seconds, inputs),
        step_prints(seconds, (out,), result=True),
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
    assert first.output_prints() == fingerprints((["found text"],), result=True)
    dependent = _trace("summary", long, long, ("summarize: found text",), "y")
    independent = _trace("other", long, long, ("unrelated",), "x")
    assert advise("a", [first, dependent]) == []
    assert len(advise("a", [first, independent])) == 1


def test_a_step_after_an_llm_answer_that_asked_for_tools_is_never_reported() -> None:
    # A framework's tool step, run because the model asked for it with the arguments
    # '{"topic":"game"}' (its input: "game", too short to be looked for), was told to be
    # gathered with the call that asked for it.
    long = MIN_SAVING * 4
    response = ChatResponse("", (ToolCall("c1", "note", '{"topic":"game"}'),), "tool_calls")
    asked = StepTrace(
        "llm.default.87e57b5e772f",
        None,
        0.0,
        long,
        NO_PRINTS,
        NO_PRINTS,
        result=orjson.dumps(response.to_json()),
    )
    tool = _trace("note:game", long, long, ("game",), "noted")
    assert advise("a", [asked, tool]) == []
    # An answer without tool calls says nothing of what follows.
    said = ChatResponse("a plain answer")
    plain = StepTrace(
        "llm.default.1", None, 0.0, long, NO_PRINTS, NO_PRINTS, result=orjson.dumps(said.to_json())
    )
    assert len(advise("a", [plain, tool])) == 1


def test_a_write_to_a_vector_collection_and_a_use_of_it_are_never_reported() -> None:
    long = MIN_SAVING * 4

    def step(key: str, started: float) -> StepTrace:
        # (texts of their own: a run of 16 characters two steps share is a dependency)
        return _trace(key, started, long, (f"in:{key[-12:]}",), f"out:{key[-12:]}")

    add = step("vectors.add.kb.v1.0a1b2c3d4e5f", 0.0)  # (a collection name may hold dots)
    search = step("vectors.search.kb.v1.5f4e3d2c1b0a", long)
    delete = step("vectors.delete.kb.v1.aaaaaaaaaaaa", long)
    other = step("vectors.search.kb.v2.bbbbbbbbbbbb", long)
    # The search must see what the add wrote, and the delete must come after it.
    assert advise("a", [add, search]) == []
    assert advise("a", [add, delete]) == []
    assert advise("a", [step("vectors.search.kb.v1.cccccccccccc", 0.0), delete]) == []
    # Another collection, or two reads of one, are as independent as any steps.
    assert len(advise("a", [add, other])) == 1
    two_reads = [step("vectors.search.kb.v1.dddddddddddd", 0.0), search]
    assert len(advise("a", two_reads)) == 1


def test_the_usual_shapes_of_a_dependency_are_never_reported() -> None:
    """Each pair here passes the first step's result on: "gather them" was advised for
    every one (a race, for the write and the read)."""
    long = MIN_SAVING * 4
    page = " ".join(f"word{i}" for i in range(700))  # ~6,000 characters
    hits = [f"hit {i}" for i in range(250)]
    preamble = "You are a careful assistant. " * 100
    deep = {"a": {"b": {"c": {"d": {"e": "deep text"}}}}}
    pairs = [
        # a long page, summarized: the prompt holds it whole
        (page, ("Summarize: " + page,)),
        # a long prompt around a short result
        (["result one"], (preamble + "\n".join(["result one"]),)),
        # the result nested deeper than is looked through
        (deep, ({"messages": [{"content": [{"text": "Use: x"}]}]},)),
        # the prompt nested deeper than is looked through
        (["short"], ({"messages": [{"role": "user", "content": [{"text": "Use: short"}]}]},)),
        # the result's dict keys
        ({"alpha-source": 1.0, "beta-source": 0.5}, ("read alpha-source",)),
        # many results, one of them used
        ([{"url": u} for u in hits], ("open " + hits[0],)),
        # a write answering nothing, then a read
        (None, ("SELECT * FROM t",)),
        # a sentence cut from the result
        (page, ("word10 word11 word12 word13",)),
    ]
    for out, inputs in pairs:
        first = _trace("first", 0.0, long, ("q",), out)
        second = _trace("second", long, long, inputs, "y")
        assert advise("a", [first, second]) == [], (out, inputs)


def test_independent_steps_with_nested_and_long_values_are_still_reported() -> None:
    long = MIN_SAVING * 4
    first = _trace("search", 0.0, long, ("q",), {"hits": ["a long result " * 50]})
    other = _trace("weather", long, long, ({"city": "Paris", "units": "metric"},), "sunny")
    assert len(advise("a", [first, other])) == 1


def test_installed_packages_are_told_apart_from_a_folder_named_like_them() -> None:
    # A user's `team-packages/helpers.py` was taken for an installed library: its
    # blocking line was skipped and the report named the agent's `ctx.step` instead.
    assert not is_library_file("/srv/app/team-packages/helpers.py")
    assert not is_library_file("/srv/app/my-site-packages-notes/helpers.py")
    assert is_library_file("/venv/lib/python3.11/site-packages/requests/api.py")
    assert is_library_file("/usr/lib/python3/dist-packages/yaml/__init__.py")


def test_an_excerpt_of_a_result_inside_other_text_is_a_dependency() -> None:
    long = MIN_SAVING * 4
    answer = "Solar power is cheap, clean and getting cheaper every year."
    first = _trace("draft", 0.0, long, ("q",), answer)
    titled = _trace("title", long, long, (f"Write a title for: {answer[:30]}...",), "t")
    unrelated = _trace("title", long, long, ("Write a title for a report on wind.",), "t")
    assert advise("a", [first, titled]) == []
    assert len(advise("a", [first, unrelated])) == 1


def test_a_lone_number_says_nothing_and_is_a_dependency() -> None:
    # A new row's id: the second step may read back what the first wrote.
    long = MIN_SAVING * 4
    saved = _trace("save", 0.0, long, ("row",), 42)
    assert advise("a", [saved, _trace("recent", long, long, ("latest",), "x")]) == []


def test_the_summary_says_findings_that_share_a_line_overlap() -> None:
    """Steps at lines 10, 11 and 12 one after the other (12 using 10's result): 10/11 and
    11/12 were each said to save ~6 s in all over 20 tasks, 12 s together, where the one
    gather that fits saved 6.2 s; and the example's ~383 ms, the largest, read as typical."""
    from legion.diagnostics.report import Diagnostic, Kind, Site
    from legion.diagnostics.summary import overlapping, summarize

    def sited(line: int) -> Site:
        return Site("agent.py", line, "brief")

    def pair(a: int, b: int, seconds: float) -> Diagnostic:
        message = f"steps at {a} and {b} could be gathered"
        return Diagnostic(Kind.SEQUENTIAL_AWAIT, message, sited(b), seconds, (sited(a), sited(b)))

    chain = [pair(10, 11, s) for s in (0.2, 0.4)] + [pair(11, 12, 0.3)]
    groups = summarize(chain)
    assert groups[0].line().endswith("[2 times; could save 600 ms in all, 300 ms on average]")
    assert overlapping(groups)
    assert not overlapping(summarize([pair(10, 11, 0.3), pair(20, 21, 0.3)]))


def test_a_field_of_the_result_passed_on_as_an_argument_of_its_own_is_a_dependency() -> None:
    """A row's id, a score, a flag taken from the first's result, or a record built from
    it: each was said to "appear independent (no result of the first went into the
    second)", advice the agent cannot follow."""
    import dataclasses

    import attrs
    import pydantic

    @dataclasses.dataclass
    class Draft:
        title: str
        n: int

    @attrs.define
    class Note:
        title: str

    class Request(pydantic.BaseModel):
        title: str

    @dataclasses.dataclass
    class Label:
        name: str

    class Tag(pydantic.BaseModel):
        name: str

    long = MIN_SAVING * 4
    title = "On the nature of tea"
    row = {"id": 17, "score": 0.93, "approved": True, "title": title}
    for taken in (
        17,
        0.93,
        True,
        Draft(title, 3),
        Note(title),
        Request(title="On the nature of tea"),
    ):
        first = _trace("insert", 0.0, long, ("q",), row)
        second = _trace("fetch", long, long, (taken,), "y")
        assert advise("a", [first, second]) == [], taken
    # A value the result does not hold is no dependency, whatever its type (a record's
    # field names count, as a dict's keys do).
    for other in (18, 0.5, False, Label("Another heading"), Tag(name="Another heading")):
        first = _trace("insert", 0.0, long, ("q",), row)
        second = _trace("fetch", long, long, (other,), "y")
        assert len(advise("a", [first, second])) == 1, other


def test_an_llm_answer_is_compared_by_what_it_said_not_by_what_is_recorded_with_it() -> None:
    # The recorded JSON holds the field names `text`, `model`, `provider` and `usage`:
    # a second prompt that asked to "translate this text" was taken for one using it.
    long = MIN_SAVING * 4
    said = ChatResponse("Pros: cheap, quiet.", model="sim-model", provider="sim")
    pros = StepTrace(
        "llm.default.1", None, 0.0, long, NO_PRINTS, NO_PRINTS, result=orjson.dumps(said.to_json())
    )
    for prompt in ("Translate this text into French: tea", "Describe the business model of tea"):
        second = StepTrace(
            "llm.default.2", None, long, 2 * long, fingerprints(([{"content": prompt}],)), NO_PRINTS
        )
        (report,) = advise("a", [pros, second])
        assert "`ctx.llm.chat(...)` on route `default` and `ctx.llm.chat(...)`" in report.message
        assert "llm.default.1" not in report.message
    used = fingerprints(([{"content": "Rank these: Pros: cheap, quiet."}],))
    second = StepTrace("llm.default.2", None, long, 2 * long, used, NO_PRINTS)
    assert advise("a", [pros, second]) == []


def test_long_texts_are_compared_in_bounded_work_and_a_shared_run_is_still_found() -> None:
    import random
    import string

    rng = random.Random(7)

    def text(n: int) -> str:
        return "".join(rng.choice(string.ascii_letters + " ") for _ in range(n))

    long = MIN_SAVING * 4
    page = text(300_000)  # a page fetched, then an unrelated URL: still reported
    first = _trace("page", 0.0, long, ("q",), page)
    url = _trace("other", long, long, ("https://example.com/b/12345",), "y")
    assert len(advise("a", [first, url])) == 1
    cut = _trace("other", long, long, (f"https://example.com/?q={page[5000:5016]}",), "y")
    assert advise("a", [first, cut]) == []
    # Two long sides: runs kept every few characters, one of 23 shared always found.
    result = text(60_000)
    for at in (0, 1, 7, 30_001, 59_977):
        prompt = text(20_000) + result[at : at + 23] + text(20_000)
        first = _trace("draft", 0.0, long, ("q",), result)
        second = _trace("edit", long, long, (prompt,), "y")
        assert advise("a", [first, second]) == [], at
    unrelated = _trace("edit", long, long, (text(40_000),), "y")
    assert len(advise("a", [_trace("draft", 0.0, long, ("q",), result), unrelated])) == 1


def test_an_llm_call_on_a_route_whose_name_holds_dots_is_named_by_it() -> None:
    long = MIN_SAVING * 4
    said = orjson.dumps(ChatResponse("an answer").to_json())
    first = StepTrace("llm.gpt-4.1.0a1b", None, 0.0, long, NO_PRINTS, NO_PRINTS, result=said)
    embed = _trace("llm.gpt-4.1.embed.2b3c", long, long, ("unrelated",), [0.1, 0.2])
    (report,) = advise("a", [first, embed])
    assert "`ctx.llm.chat(...)` on route `gpt-4.1` and `ctx.llm.embed(...)` on route `gpt-4.1`" in (
        report.message
    )


def test_a_durable_wait_is_never_one_side_of_a_report() -> None:
    """``ctx.map``'s children, then a step that joins their outputs (their sum: a value
    computed from the result, which the fingerprints cannot see): gathering them would
    run the join before the children end. A sleep before a retry is waited on as well."""
    for wait in ("legion.children", "legion.sleep", "legion.wait:go"):
        waited = _trace(wait, 0.0, 0.5, (), [3, 4, 5])
        joined = _trace("joined", 0.5, 0.5, ({"total": 12},), "ok")
        assert advise("parent", [waited, joined]) == [], wait
        assert advise("parent", [joined, _trace(wait, 1.0, 0.5, (), None)]) == [], wait
    control = _trace("children", 0.0, 0.5, (), [3, 4, 5])  # (a step of the user's own)
    assert len(advise("parent", [control, _trace("joined", 0.5, 0.5, ({"total": 12},), "ok")])) == 1
