"""Submitting input lines whose ``"_key"`` may name a task of another input.

The same key on two lines with the same input is one task (the file resumes); with another
input, the later line is an error on that line. A key that names a task submitted before
with another input (a store answers `legion.errors.IdempotencyConflict`) makes
every line with that key an error: never a silent answer with the other task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from legion import codec
from legion.agent import Agent
from legion.errors import IdempotencyConflict
from legion.inputs import InputLine
from legion.run.runtime import Runtime
from legion.task import Submitted

CHUNK = 5000
"""Lines submitted in one transaction: what a submission holds on the way to the store
(each line's task, its encoding, the statement's rows) is a chunk's, not the file's
(200,000 lines peaked at 1.1 GB), and the first chunk's tasks run while the next go in."""


async def submit_lines(
    rt: Runtime, agent: Agent, lines: Sequence[InputLine]
) -> tuple[list[InputLine], list[Submitted], list[InputLine]]:
    """Submit ``lines``, a chunk at a time: answer the lines submitted, their tasks (in
    order), and the lines refused for a conflicting key (each with its ``error``)."""
    good, refused = _first_of_each_key(lines)
    done: list[InputLine] = []
    submitted: list[Submitted] = []
    for lo in range(0, len(good), CHUNK):
        chunk, tasks, clashed = await _submit_chunk(rt, agent, good[lo : lo + CHUNK])
        done += chunk
        submitted += tasks
        refused += clashed
    return done, submitted, refused


async def _submit_chunk(
    rt: Runtime, agent: Agent, good: list[InputLine]
) -> tuple[list[InputLine], list[Submitted], list[InputLine]]:
    refused: list[InputLine] = []
    while True:
        try:
            submitted = await rt.submit_many(
                agent,
                [ln.value for ln in good],
                keys=[ln.key for ln in good],
                sessions=[ln.session for ln in good],
                priorities=[ln.priority for ln in good],
            )
        except IdempotencyConflict as exc:
            keys = set(exc.keys)
            clash = [ln for ln in good if ln.key in keys]
            if not clash:
                raise
            refused.extend(
                dataclasses.replace(
                    ln,
                    error=f'line {ln.line}: "_key" {ln.key!r} names a task submitted before '
                    "with another input; use a new key for a new task",
                )
                for ln in clash
            )
            good = [ln for ln in good if ln.key not in keys]
        else:
            return good, submitted, refused


def _first_of_each_key(lines: Sequence[InputLine]) -> tuple[list[InputLine], list[InputLine]]:
    first: dict[str, tuple[InputLine, bytes]] = {}
    good: list[InputLine] = []
    refused: list[InputLine] = []
    for ln in lines:
        if ln.key is None or ln.derived:  # (a derived key names its line alone)
            good.append(ln)
            continue
        encoded = codec.canonical(codec.dumps(ln.value))  # (keys in any order: one input)
        seen = first.setdefault(ln.key, (ln, encoded))
        if seen[1] != encoded:
            message = (
                f'line {ln.line}: "_key" {ln.key!r} was used on line {seen[0].line} with '
                "another input; use a new key for a new task"
            )
            refused.append(dataclasses.replace(ln, error=message))
        else:
            good.append(ln)
    return good, refused
