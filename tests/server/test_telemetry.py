"""Tracing and structured logs: spans for task, step and LLM call; JSON log lines."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import legion
from legion import telemetry
from legion.errors import ProviderUnavailable
from legion.executors import ProcessExecutor
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest, ChatResponse, Usage
from legion.task import TaskStatus
from legion.testing import ScriptedProvider
from tests.executors import agents


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
    assert task.attributes["legion.task.outcome"] == "succeeded" and task.status.is_unset
    assert task.attributes["legion.task.llm_calls"] == 1
    assert task.attributes["gen_ai.usage.input_tokens"] == 12
    assert task.attributes["gen_ai.usage.output_tokens"] == 3
    assert float(task.attributes["legion.task.running_s"]) > 0  # type: ignore[arg-type]
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


@legion.agent(retries=0, timeout=0.2)
async def stuck(ctx: legion.Context, x: int) -> int:
    await ctx.step("forever", asyncio.Event().wait)  # stopped by the agent's timeout
    return x


@legion.agent(retries=0, output=int)
async def wrong_output(ctx: legion.Context, x: int) -> Any:
    return "not a number"


async def test_an_attempt_that_timed_out_or_cannot_store_its_output_ends_its_span_in_error(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    # Both spans had no status: a timeout reaches the agent as CancelledError (no
    # Exception), and the output is checked after the agent's call has returned.
    async with legion.Runtime(f"sqlite:///{tmp_path / 't.db'}") as rt:
        timed_out = await rt.result((await rt.submit(stuck, 1)).id)
        unstorable = await rt.result((await rt.submit(wrong_output, 2)).id)
    assert timed_out.status is TaskStatus.DEAD and unstorable.status is TaskStatus.FAILED
    found = spans.get_finished_spans()
    for name, outcome, error in (
        ("legion.task stuck", "dead", "TaskTimeout"),
        ("legion.task wrong_output", "failed", "OutputError"),
    ):
        (task,) = by_name(found, name)
        assert task.attributes is not None and task.attributes["legion.task.outcome"] == outcome
        assert task.status.status_code is StatusCode.ERROR
        assert task.status.description is not None and task.status.description.startswith(error)
        (event,) = (e for e in task.events if e.name == "exception")
        assert event.attributes is not None and event.attributes["exception.type"] == error
    (step,) = by_name(found, "legion.step")
    assert step.status.status_code is StatusCode.ERROR and step.status.description == "cancelled"


class Overlapping(ScriptedProvider):
    """Answers once ``n`` calls are in flight together."""

    def __init__(self, n: int) -> None:
        super().__init__(["answer"] * n)
        self._all_in = asyncio.Barrier(n)

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        async with asyncio.timeout(20):  # a bound on a broken test, not a synchronisation
            await self._all_in.wait()
        return await super().chat(request, timeout=timeout)


async def test_calls_of_an_agent_in_a_child_process_nest_in_its_task_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    # The worker served every call of one child in one shared contextvars.Context: a call
    # in flight was the current span of the next, so three calls at once came out as a
    # chain (the second call's step a child of the first call's span).
    route = Route("main", Overlapping(3), "m", Capacity("main"))
    executors = {"process": ProcessExecutor(processes=1)}
    url = f"sqlite:///{tmp_path / 't.db'}"
    async with (
        LLMClient([route]) as llm,
        legion.Runtime(url, llm=llm, executors=executors, executor="process") as rt,
    ):
        result = await rt.result((await rt.submit(agents.gathered_chats, 3)).id)
    assert result.output == ["answer"] * 3
    found = spans.get_finished_spans()
    (task,) = by_name(found, "legion.task gathered_chats")
    steps = by_name(found, "legion.step")
    assert len(steps) == 3
    assert all(s.parent is not None and s.parent.span_id == task.context.span_id for s in steps)
    chats = by_name(found, "chat m")
    assert sorted(c.parent.span_id for c in chats if c.parent) == sorted(
        s.context.span_id for s in steps
    )


async def test_a_failing_llm_call_marks_its_span(spans: InMemorySpanExporter) -> None:
    route = Route("r", ScriptedProvider([legion.Permanent("no")]), "m", Capacity("r"))
    async with LLMClient([route]) as llm:
        with pytest.raises(legion.Permanent):
            await llm.chat([{"role": "user", "content": "x"}])
    (chat,) = spans.get_finished_spans()
    assert chat.attributes is not None and chat.attributes["error.type"] == "Permanent"
    assert not chat.status.is_ok


async def test_each_failed_try_of_a_call_is_an_event_on_its_span(
    spans: InMemorySpanExporter,
) -> None:
    # A call retried after a 503 was one span, OK, with nothing to say it was retried.
    provider = ScriptedProvider(
        [ProviderUnavailable("503: overloaded", provider="scripted", status=503), "fine"]
    )
    route = Route("r", provider, "m", Capacity("r"))
    async with LLMClient([route], retry=legion.RetryPolicy(retries=2, backoff=0.001)) as llm:
        assert (await llm.chat([{"role": "user", "content": "x"}])).text == "fine"
    (chat,) = spans.get_finished_spans()
    (event,) = chat.events
    assert event.name == "legion.llm.try_failed" and event.attributes is not None
    assert dict(event.attributes) == {
        "error.type": "ProviderUnavailable",
        "error.message": "503: overloaded",
        "legion.llm.deployment": "r",
    }


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


def test_the_service_name_of_the_standard_variables_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # `service.name` was always "legion": OTEL_SERVICE_NAME was overridden.
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    assert telemetry.resource_attributes("legion") == {"service.name": "legion"}
    for name, value in (
        ("OTEL_SERVICE_NAME", "my-agents"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team=a, service.name=from-attributes"),
    ):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert telemetry.resource_attributes("legion") == {}
            resource = Resource.create(telemetry.resource_attributes("legion"))
            assert resource.attributes["service.name"] == value.rpartition("=")[2]
