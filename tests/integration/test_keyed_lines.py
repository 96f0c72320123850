"""`legion run`'s submission of its lines, a chunk at a time (`legion.cli.keyed_lines`)."""

from __future__ import annotations

from pathlib import Path

import pytest

import legion
from legion import Runtime
from legion.cli import keyed_lines
from legion.inputs import parse_line


@legion.agent
async def echo(ctx: legion.Context, x: int) -> int:
    return x


async def test_lines_go_in_chunks_in_order_with_each_refusal_in_its_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole file went in one transaction: 200,000 lines peaked at 1.1 GB.
    monkeypatch.setattr(keyed_lines, "CHUNK", 2)
    texts = [b'{"x": 1}', b'{"x": 2, "_key": "k"}', b'{"x": 3}', b'{"x": 4}', b'{"x": 5}']
    async with Runtime(f"sqlite:///{tmp_path / 'k.db'}", agents=[echo]) as rt:
        # a task of key "k" with another input, from an earlier run: line 2 is refused
        await rt.submit(echo, 9, key="k")
        lines = [parse_line(t, n, "echo") for n, t in enumerate(texts, 1)]
        good, submitted, refused = await keyed_lines.submit_lines(rt, echo, lines)
        assert [ln.line for ln in good] == [1, 3, 4, 5]
        assert [ln.line for ln in refused] == [2]
        assert all(s.created for s in submitted)
        assert [(await rt.result(s.id)).output for s in submitted] == [1, 3, 4, 5]
