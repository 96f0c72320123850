"""The sequential-await advisor: steps that waited for each other for no reason.

The context keeps, for every step it ran, when it ran, where it was called, and
fingerprints of its inputs and of its result (the whole value and its top-level items).
Two steps that ran back to back — the second started after the first ended — where no
input of the second matches the first's result could have run together: ``ctx.gather``
would have saved the shorter one's duration.

When in doubt, no report: a false "could be gathered" costs a user more than a missed
one. So only steps awaited one after the other in the agent's own flow count (a step
that ran inside ``ctx.gather`` is already part of concurrent work, and the order around
it is the gather's), and any text of the first's result (however short, numbers and
dict keys included) found inside a text of the second's inputs, or a text of the
second's inputs (16 characters or more) found inside one of the result, counts as a
dependency, and so is a run of 16 characters they share: a result passed on in a
transformed form (a field of it, pasted into a prompt; a sentence or an excerpt cut from
it, inside other text) is seen. A first step whose result says nothing (``None``, a
boolean, a lone number, an empty text: a write the second may read back) is a dependency, and so is
a value too large or too deep to look through whole (past `MAX_TEXTS` texts, or nested
deeper than `MAX_DEPTH`). A dependency through a value computed from the result (its
length, a parsed number) is still not seen; the report says the steps *appear*
independent.
"""

from __future__ import annotations

import contextvars
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
        """Fingerprints of the step's result (see `result`)."""
        if self.result is None:
            return self.outputs
        return step_prints(self.seconds, (codec.loads(self.result),))

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


Fingerprint = int | str
"""A hash of a value's JSON (an int), or a text found in it (a str)."""

NO_PRINTS: frozenset[Fingerprint] = frozenset()

UNKNOWN: Fingerprint = "\x00legion: not looked through"
"""In a step's fingerprints: part of the value was not looked through (too many texts,
nested too deep), so it may hold anything: the pair is not reported."""


def step_prints(seconds: float, values: Iterable[Any]) -> frozenset[Fingerprint]:
    """`fingerprints` of a step's inputs or result, for a step that can be in a report: one
    shorter than `MIN_SAVING` never is (a report needs both steps of its pair that long),
    so its values are not fingerprinted at all (most steps: a hash per value saved)."""
    return fingerprints(values) if seconds >= MIN_SAVING else NO_PRINTS


def fingerprints(values: Iterable[Any]) -> frozenset[Fingerprint]:
    """Fingerprints of each value and of its top-level items (hashes of their JSON; JSON
    values only), plus the texts found in it (numbers as their text), so that a result
    pasted into a prompt is seen. A lone number says nothing (none: a row's id, a count
    written, which the second step may read back as a whole)."""
    found: set[Fingerprint] = set()
    for value in values:
        if isinstance(value, (int, float)):  # (a bool among them, as `_add` takes it)
            continue
        _add(found, value)
        if isinstance(value, (list, tuple)):
            for item in value:
                _add(found, item)
        elif isinstance(value, dict):
            for item in value.values():
                _add(found, item)
        _texts(found, value, 0)
    return frozenset(found)


def _texts(found: set[Fingerprint], value: Any, depth: int) -> None:
    if isinstance(value, str):
        if value.strip():
            found.add(value)  # (the agent's own string, not a copy)
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        found.add(str(value))
        return
    if not isinstance(value, (list, tuple, dict)) or not value:
        return
    if depth >= MAX_DEPTH or len(found) > MAX_TEXTS:
        found.add(UNKNOWN)  # more inside than is looked through: it may hold anything
        return
    items = itertools.chain(value, value.values()) if isinstance(value, dict) else value
    for item in items:  # (a dict's keys, then its values)
        if len(found) > MAX_TEXTS:
            found.add(UNKNOWN)
            return
        _texts(found, item, depth + 1)


def _uses(second: StepTrace, first: StepTrace) -> bool:
    """Whether ``second``'s inputs may hold ``first``'s result (see the module's text):
    a whole value or item, a text of it inside one of its own texts, one of its own
    texts inside one of it; or a result that says nothing, or either side not looked
    through whole."""
    if _asked_for_tools(first):
        return True
    outputs = first.output_prints()
    if not outputs or UNKNOWN in outputs or UNKNOWN in second.inputs:
        return True
    if second.inputs & outputs:
        return True
    texts_in = [t for t in second.inputs if isinstance(t, str)]
    texts_out = [o for o in outputs if isinstance(o, str)]
    if any(o in t for o in texts_out for t in texts_in):
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


MAX_COMPARED = 1_000_000
"""Characters of texts compared run by run at most; past it, the pair counts as a
dependency (when in doubt, no report)."""


def _share_excerpt(texts_out: list[str], texts_in: list[str]) -> bool:
    """Whether a text of the result and one of the inputs have a run of `MIN_EXCERPT`
    characters in common: a piece of the result inside other text (``f"Title for:
    {draft[:60]}"``), which neither holds whole. Each run of the result's texts is kept
    once, and each of the inputs' looked up (linear in their lengths)."""
    texts_out = [o for o in texts_out if len(o) >= MIN_EXCERPT]
    texts_in = [t for t in texts_in if len(t) >= MIN_EXCERPT]
    if not texts_out or not texts_in:
        return False
    if sum(map(len, texts_out)) + sum(map(len, texts_in)) > MAX_COMPARED:
        return True
    size = MIN_EXCERPT
    runs = {o[i : i + size] for o in texts_out for i in range(len(o) - size + 1)}
    return any(t[i : i + size] in runs for t in texts_in for i in range(len(t) - size + 1))


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


def _add(found: set[Fingerprint], value: Any) -> None:
    if value is None or isinstance(value, bool):
        return  # too common to mean a dependency
    try:
        found.add(codec.same_value_hash(value))  # compared within one attempt only
    except Exception:  # not JSON: it cannot be compared, so it does not count
        return


def advise(agent: str, steps: Sequence[StepTrace]) -> list[Diagnostic]:
    """One report per pair of consecutive, independent, sequential steps."""
    ordered = sorted(steps, key=lambda s: s.started)
    reports = []
    for first, second in itertools.pairwise(ordered):
        if second.started < first.finished:
            continue  # they overlapped: already concurrent
        if first.gathered or second.gathered:
            continue  # part of a ctx.gather: already concurrent work, ordered by it
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
                f"agent `{agent}`: steps `{first.key}` and `{second.key}`{where} ran one after "
                f"the other but appear independent (no result of the first went into the "
                f"second): unless the second waits on what the first did (a check, a write it "
                f"reads back), `await ctx.gather(...)` them to save ~{saving * 1000:.0f} ms",
                b,
                saving,
                tuple(s for s in (a, b) if s is not None),
            )
        )
    return reports


def _short(site: Site) -> str:
    from legion.diagnostics.report import short_path

    return f"{short_path(site.file)}:{site.line}"
