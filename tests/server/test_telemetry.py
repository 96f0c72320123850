"""Tracing and structured logs: spans for task, step and LLM call; JSON log lines."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import legion
from legion import telemetry
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.types import ChatResponse, Usage
from legion.testing import ScriptedProvider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable_tracing(provider)
    yield exporter
    telemetry.disable_tracing()
    provider.shutdown()


@legion.agent(retries=0)
async def traced(ctx: legion.Context, topic: str) -> str:
    async def look(name: str) -> str:
        await asyncio.sleep(0.01)
        return name

    await ctx.gather(ctx.step("left", look, "l"), ctx.step("right", look, "r"))
    reply = await ctx.llm.chat([{"role": "user", "content": topic}], max_tokens=5)
    return reply.text


def by_name(found: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in found if s.name == name]


async def test_spans_for_task_steps_and_llm_calls(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    reply = ChatResponse("hi", (), "stop", Usage(12, 3), "m-2024", "scripted")
    route = Route("main", ScriptedProvider([reply], name="scripted"), "m", Capacity("main"))
    async with (
        LLMClient([route]) as llm,
        legion.Runtime(f"sqlite:///{tmp_path / 't.db'}", llm=llm) as rt,
    ):
        result = await rt.result((await rt.submit(traced, "owls")).id)
    assert result.output == "hi"
    found = spans.get_finished_spans()
    (task,) = by_name(found, "legion.task traced")
    assert task.attributes is not None
    assert task.attributes["legion.task.id"] == result.id
    assert task.attributes["legion.task.attempt"] == 1
    steps = by_name(found, "legion.step")
    keys = {s.attributes["legion.step.key"] for s in steps if s.attributes}
    assert {"left", "right"} <= keys and any(str(k).startswith("llm.main.") for k in keys)
    assert all(s.parent is not None and s.parent.span_id == task.context.span_id for s in steps)
    left, right = (
        s for s in steps if s.attributes and s.attributes["legion.step.key"] in ("left", "right")
    )
    assert left.start_time is not None and right.start_time is not None
    assert left.end_time is not None and right.end_time is not None
    assert left.start_time < right.end_time and right.start_time < left.end_time  # in parallel
    (chat,) = by_name(found, "chat m")
    llm_step = next(
        s for s in steps if str((s.attributes or {})["legion.step.key"]).startswith("llm.")
    )
    assert chat.parent is not None and chat.parent.span_id == llm_step.context.span_id
    assert dict(chat.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "scripted",
        "gen_ai.request.model": "m",
        "gen_ai.request.max_tokens": 5,
        "legion.llm.route": "main",
        "gen_ai.response.model": "m-2024",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ("stop",),
    }


async def test_a_failing_llm_call_marks_its_span(spans: InMemorySpanExporter) -> None:
    route = Route("r", ScriptedProvider([legion.Permanent("no")]), "m", Capacity("r"))
    async with LLMClient([route]) as llm:
        with pytest.raises(legion.Permanent):
            await llm.chat([{"role": "user", "content": "x"}])
    (chat,) = spans.get_finished_spans()
    assert chat.attributes is not None and chat.attributes["error.type"] == "Permanent"
    assert not chat.status.is_ok


async def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    assert telemetry.tracing is False

    @legion.agent
    async def plain(ctx: legion.Context, x: int) -> int:
        doubled: int = await ctx.step("double", lambda: 2 * x)
        return doubled

    async with legion.Runtime(f"sqlite:///{tmp_path / 'o.db'}") as rt:
        assert (await rt.result((await rt.submit(plain, 2)).id)).output == 4


def test_json_logs_carry_task_ids() -> None:
    formatter = telemetry.JsonFormatter()
    record = logging.LogRecord("legion.agent.x", logging.INFO, __file__, 1, "step %s", ("a",), None)
    record.task_id = 42
    record.agent = "x"
    line = json.loads(formatter.format(record))
    assert line["message"] == "step a" and line["task_id"] == 42 and line["agent"] == "x"
    assert line["level"] == "info" and line["logger"] == "legion.agent.x" and "time" in line
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("l", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failed))["exception"]
