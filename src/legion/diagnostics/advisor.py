"""The sequential-await advisor: steps that waited for each other for no reason.

The context keeps, for every step it ran, when it ran, where it was called, and
fingerprints of its inputs and of its result: the texts found in them (strings, dict
keys, numbers as their text; a dataclass's, a pydantic model's or an attrs class's
fields as a dict's). Two steps that ran back to back — the second started after the
first ended — where no input of the second matches the first's result could have run
together: ``ctx.gather`` would have saved the shorter one's duration.

When in doubt, no report: a false "could be gathered" costs a user more than a missed
one. So only steps awaited one after the other in the agent's own flow count (a step
that ran inside ``ctx.gather`` is already part of concurrent work, and the order around
it is the gather's), and any text of the first's result (however short, numbers and
dict keys included) found inside a text of the second's inputs, or a text of the
second's inputs (16 characters or more) found inside one of the result, counts as a
dependency, and so is a run of 16 characters they share (23 or more are always found;
past `MAX_COMPARED` characters, the pair counts as a dependency): a result passed on in
a transformed form (a field of it, a number or a flag of it as an argument of its own,
pasted into a prompt; a sentence or an excerpt cut from it, inside other text) is seen.
A first step whose result says nothing (``None``, a boolean, a lone number, an empty
text: a write the second may read back) is a dependency, and so is a value too large or
too deep to look through whole (past `MAX_TEXTS` texts, or nested deeper than
`MAX_DEPTH`). An LLM call's result is its answer (its text and the arguments of the
tools it asked for), not the metadata recorded with it. A dependency through a value
computed from the result (its length, a parsed number) is still not seen; the report
says the steps *appear* independent.

Cost: texts are collected only for steps long enough to be in a report, and a pair is
compared when the attempt ends, in time linear in their texts' lengths (a 100 KB result
and an unrelated prompt: ~0.2 ms).
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from legion import codec
from legion.diagnostics.report import Diagnostic, Kind, Site
from legion.diagnostics.unawaited import SiteRef
from legion.record import record

GATHERED: contextvars.ContextVar[bool] = contextvars.ContextVar("legion_gathered", default=False)
"""Set in the tasks ``ctx.gather`` runs: the steps they run are gathered."""

# Steps shorter than this are not worth a gather.
MIN_SAVING = 0.005


@record
class StepTrace:
    key: str
    site_ref: SiteRef | None
    started: float
    finished: float
    inputs: frozenset[Fingerprint]
    outputs: frozenset[Fingerprint]
    gathered: bool = False
    """The step ran inside ``ctx.gather`` (one of several concurrent awaitables)."""
    result: bytes | None = None
    """The step's recorded JSON, fingerprinted when a report needs its result (then
    ``outputs`` is empty): most attempts never compare one (a lone step, or all of them
    short), and the JSON cannot change after the fact, as the agent's copy of the value
    can."""

    def output_prints(self) -> frozenset[Fingerprint]:
        """Fingerprints of the step's result (see `result`); of an LLM call's, its answer."""
        if self.result is None:
            return self.outputs
        value = codec.loads(self.result)
        if _chat_call(self.key) and isinstance(value, dict):
            value = _answer(value)
        return step_prints(self.seconds, (value,), result=True)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def site(self) -> Site | None:
        return self.site_ref.site() if self.site_ref is not None else None


MAX_TEXTS = 200
"""Texts kept per step; a value with more is not looked through (`UNKNOWN`)."""

MAX_DEPTH = 4
"""Levels of nesting looked through; a value nested deeper is not (`UNKNOWN`)."""

MIN_EXCERPT = 16
"""The shortest text of the second step's inputs that counts when found inside one of
the first's result texts (shorter ones are found anywhere)."""


Fingerprint = str
"""A text found in a value (see `fingerprints`)."""

NO_PRINTS: frozenset[Fingerprint] = frozenset()

INTERNAL = "legion."
"""The keys of legion's own records: a durable wait (``legion.children`` for
``ctx.map``'s children, ``legion.sleep``, ``legion.wait:EVENT``) and what it keeps. Never
one side of a report: the step after a wait waits for it on purpose, and a replayed
wait's duration is not what gathering it would save."""

UNKNOWN: Fingerprint = "\x00legion: not looked through"
"""In a step's fingerprints: part of the value was not looked through (too many texts,
nested too deep), so it may hold anything: the pair is not reported."""


def step_prints(
    seconds: float, values: Iterable[Any], *, result: bool = False
) -> frozenset[Fingerprint]:
    """`fingerprints` of a step's inputs or result, for a step that can be in a report: one
    shorter than `MIN_SAVING` never is (a report needs both steps of its pair that long),
    so its values are not fingerprinted at all (most steps: nothing to collect)."""
    return fingerprints(values, result=result) if seconds >= MIN_SAVING else NO_PRINTS


def fingerprints(values: Iterable[Any], *, result: bool = False) -> frozenset[Fingerprint]:
    """The texts found in each value: its strings, its dicts' keys, its numbers as their
    text, a marker for each boolean (`TRUE`, `FALSE`: one of the first's result passed
    on as a flag); a dataclass's, a pydantic model's or an attrs class's fields as a
    dict's. Of a ``result``, a lone number or boolean says nothing (none: a row's id, a
    count written, which the second step may read back as a whole); of an input, it is
    what the second step may have taken from a field of the first's result."""
    found: set[Fingerprint] = set()
    for value in values:
        if result and isinstance(value, (int, float)):  # (a bool among them)
            continue
        _texts(found, value, 0)
    return frozenset(found)


TRUE: Fingerprint = "\x00legion: true"
FALSE: Fingerprint = "\x00legion: false"


def _texts(found: set[Fingerprint], value: Any, depth: int) -> None:
    if isinstance(value, str):
        if value.strip():
            found.add(value)  # (the agent's own string, not a copy)
        return
    if isinstance(value, bool):
        found.add(TRUE if value else FALSE)
        return
    if isinstance(value, (int, float)):
        found.add(str(value))
        return
    if value is None:
        return
    if not isinstance(value, (list, tuple, dict)):
        value = _fields(value)
        if value is None:
            return  # not data (a client, a connection): it cannot be compared
    if not value:
        return
    if depth >= MAX_DEPTH or len(found) + len(value) > MAX_TEXTS:
        found.add(UNKNOWN)  # more inside than is looked through: it may hold anything
        return
    items = itertools.chain(value, value.values()) if isinstance(value, dict) else value
    for item in items:  # (a dict's keys, then its values)
        if len(found) > MAX_TEXTS:
            found.add(UNKNOWN)
            return
        _texts(found, item, depth + 1)


def _fields(value: Any) -> dict[str, Any] | None:
    """A dataclass's, a pydantic model's or an attrs class's fields (a record built from
    a step's result and passed on to the next), else ``None``."""
    if isinstance(value, type):
        return None
    try:
        if dataclasses.is_dataclass(value):
            return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
        attrs = getattr(type(value), "__attrs_attrs__", None)
        if attrs is not None:
            return {a.name: getattr(value, a.name, None) for a in attrs}
        fields = getattr(type(value), "model_fields", None)  # pydantic 2
        if isinstance(fields, dict):
            return {name: getattr(value, name, None) for name in fields}
    except Exception:  # (a class that answers oddly: not compared)
        return None
    return None


def _chat_call(key: str) -> bool:
    """Whether a step is an LLM chat call (``llm.<route>.<digest>``; not an embedding)."""
    return key.startswith("llm.") and ".embed." not in key


def _answer(recorded: dict[str, Any]) -> list[str]:
    """What an LLM call answered, of the JSON recorded for it: its text and the arguments
    of the tools it asked for; not the field names and metadata kept with them (``text``,
    ``model``, the provider, the token counts), which any prompt may contain."""
    found = [recorded.get("text")]
    found += [call.get("arguments") for call in recorded.get("tool_calls") or ()]
    return [text for text in found if isinstance(text, str) and text]


def _uses(second: StepTrace, first: StepTrace) -> bool:
    """Whether ``second``'s inputs may hold ``first``'s result (see the module's text):
    a text of it, whole or inside one of its own texts, one of its own texts inside one
    of it, a run of characters they share; or a result that says nothing, or either
    side not looked through whole."""
    if _asked_for_tools(first):
        return True
    outputs = first.output_prints()
    if not outputs or UNKNOWN in outputs or UNKNOWN in second.inputs:
        return True
    if second.inputs & outputs:
        return True
    texts_in, texts_out = list(second.inputs), list(outputs)
    joined = "\x01".join(texts_in)  # (one search in C per text of the result)
    if len(texts_out) * len(joined) > MAX_SEARCHED:
        return True  # too much to look through: when in doubt, no report
    if any(o in joined for o in texts_out):
        return True
    return _share_excerpt(texts_out, texts_in)


def _asked_for_tools(step: StepTrace) -> bool:
    """Whether ``step`` is an LLM call the model answered with tool calls: what runs next
    is what it asked for (a framework's tool, its arguments parsed from the answer: a
    word of them, too short to be looked for, or a number), never independent of it."""
    return (
        step.key.startswith("llm.")
        and step.result is not None
        and b'"tool_calls":[{' in step.result
    )


MAX_COMPARED = 200_000
"""Characters of the longer side's texts compared run by run at most; past it, the pair
counts as a dependency (when in doubt, no report)."""

MAX_SEARCHED = 8_000_000
"""Characters searched at most (runs of the shorter side times the longer side's
length) when each run of a short side is looked for in the longer one's texts."""

STRIDE = 8
"""Of the longer side's texts, the runs kept are those every `STRIDE` characters: a run
of ``MIN_EXCERPT + STRIDE - 1`` characters shared holds one of them."""


def _share_excerpt(texts_out: list[str], texts_in: list[str]) -> bool:
    """Whether a text of the result and one of the inputs have a run of `MIN_EXCERPT`
    characters in common: a piece of the result inside other text (``f"Title for:
    {draft[:60]}"``), which neither holds whole.

    A short side (a URL, a question) has each of its runs looked for in the other's
    texts (a search in C: 12 runs in 100 KB take ~0.2 ms). Else the longer side's runs,
    every `STRIDE` characters, are kept once, and each of the shorter side's looked up:
    linear in their lengths, and a shared run of ``MIN_EXCERPT + STRIDE - 1`` characters
    always found."""
    size = MIN_EXCERPT
    texts_out = [o for o in texts_out if len(o) >= size]
    texts_in = [t for t in texts_in if len(t) >= size]
    if not texts_out or not texts_in:
        return False
    lengths = sum(map(len, texts_out)), sum(map(len, texts_in))
    longer, shorter = (texts_out, texts_in) if lengths[0] >= lengths[1] else (texts_in, texts_out)
    longest, runs = max(lengths), sum(len(t) - size + 1 for t in shorter)
    if runs * longest <= MAX_SEARCHED:
        joined = "\x01".join(longer)  # (one search in C per run, whatever the texts' count)
        return any(t[i : i + size] in joined for t in shorter for i in range(len(t) - size + 1))
    if longest > MAX_COMPARED:
        return True
    kept = {o[i : i + size] for o in longer for i in range(0, len(o) - size + 1, STRIDE)}
    return any(t[i : i + size] in kept for t in shorter for i in range(len(t) - size + 1))


_VECTOR_WRITES = ("add", "delete")


def _same_collection(first: str, second: str) -> bool:
    """Whether two steps touch one vector collection and one of them writes it (keys
    ``vectors.<op>.<collection>.<digest>``): the search after an add must see what it
    added, so they are not independent, however unrelated their values look."""
    a, b = _vector_step(first), _vector_step(second)
    return (
        a is not None
        and b is not None
        and a[1] == b[1]
        and (a[0] in _VECTOR_WRITES or b[0] in _VECTOR_WRITES)
    )


def _vector_step(key: str) -> tuple[str, str] | None:
    """``(op, collection)`` of a vector step's key, else ``None``."""
    if not key.startswith("vectors."):
        return None
    op, _, rest = key[len("vectors.") :].partition(".")
    collection, _, _digest = rest.rpartition(".")
    return (op, collection) if collection else None


def advise(agent: str, steps: Sequence[StepTrace]) -> list[Diagnostic]:
    """One report per pair of consecutive, independent, sequential steps."""
    ordered = sorted(steps, key=lambda s: s.started)
    reports = []
    for first, second in itertools.pairwise(ordered):
        if second.started < first.finished:
            continue  # they overlapped: already concurrent
        if first.gathered or second.gathered:
            continue  # part of a ctx.gather: already concurrent work, ordered by it
        if first.key.startswith(INTERNAL) or second.key.startswith(INTERNAL):
            continue  # a durable wait (children, a sleep, a signal): waited on on purpose
        saving = min(first.seconds, second.seconds)
        if saving < MIN_SAVING:
            continue  # not worth a gather (and such a step has no fingerprints)
        if _uses(second, first) or _same_collection(first.key, second.key):
            continue  # the second used the first's result, or what it wrote
        a, b = first.site, second.site
        where = f" ({_short(a)} and {_short(b)})" if a and b else ""
        reports.append(
            Diagnostic(
                Kind.SEQUENTIAL_AWAIT,
                f"agent `{agent}`: {_pair(first.key, second.key)}{where} ran one after "
                f"the other but appear independent (no result of the first went into the "
                f"second): unless the second waits on what the first did (a check, a write it "
                f"reads back), `await ctx.gather(...)` them to save ~{saving * 1000:.0f} ms",
                b,
                saving,
                tuple(s for s in (a, b) if s is not None),
            )
        )
    return reports


def _pair(first: str, second: str) -> str:
    """How a report names its two steps: plain steps by their names (``steps `a` and
    `b```), an LLM call as the agent wrote it, with its route, not by its key's digest."""
    if not first.startswith("llm.") and not second.startswith("llm."):
        return f"steps `{first}` and `{second}`"
    return f"{_named(first)} and {_named(second)}"


def _named(key: str) -> str:
    if not key.startswith("llm."):
        return f"step `{key}`"
    # ``llm.<route>.<digest>`` or ``llm.<route>.embed.<digest>``: a route's name may hold
    # dots (``gpt-4.1``), its digest none.
    route = key[len("llm.") :].rpartition(".")[0]
    embed = route.endswith(".embed")
    call = "ctx.llm.embed" if embed else "ctx.llm.chat"
    return f"`{call}(...)` on route `{route.removesuffix('.embed') if embed else route}`"


def _short(site: Site) -> str:
    from legion.diagnostics.report import short_path

    return f"{short_path(site.file)}:{site.line}"
