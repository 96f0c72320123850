"""Pydantic AI's ``Agent.run`` inside a legion agent: tools and structured output,
every request a recorded call counted at the simulator."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from pydantic_ai import Agent, RunContext

import legion
from legion import Runtime
from legion.integrations.pydantic_ai import model
from tests.integrations.conftest import SimRoute


class Forecast(BaseModel):
    city: str
    summary: str
    warm: bool


LEDGER: list[Path] = []

weather = Agent(output_type=Forecast, instructions="Give the forecast.", deps_type=str)


@weather.tool
def temperature(run: RunContext[str], city: str) -> float:
    """The temperature in ``city`` now."""
    with LEDGER[0].open("a") as ledger:
        ledger.write(f"{run.deps} {city}\n")
    return 21.5


@legion.agent(retries=1, backoff=0)
async def forecast(ctx: legion.Context, question: str) -> dict[str, object]:
    result = await weather.run(question, model=model(ctx), deps=f"{ctx.task_id}/{ctx.attempt}")
    if ctx.attempt == 1 and question.startswith("crash"):
        raise RuntimeError("the attempt dies after the run")
    return result.output.model_dump()


async def test_tools_and_structured_output_through_legion(
    db_url: str, sim_route: SimRoute, tmp_path: Path
) -> None:
    LEDGER[:] = [tmp_path / "ledger"]
    async with Runtime(db_url, llm=sim_route.client) as rt:
        results = [r async for r in rt.map(forecast, ["Weather in Paris?", "And Rome?"])]
    assert all(r.ok for r in results), [r.error for r in results]
    for result in results:
        out = Forecast.model_validate(result.output)  # the simulator's structured answer
        assert out.city and out.summary and out.warm is True
        # Two requests: the tool round, then the final result tool.
        assert result.usage is not None and result.usage["llm_calls"] == 2
    assert sim_route.requests == 4
    assert len((tmp_path / "ledger").read_text().splitlines()) == 2


async def test_a_rerun_replays_the_recorded_requests_and_buys_none(
    db_url: str, sim_route: SimRoute, tmp_path: Path
) -> None:
    LEDGER[:] = [tmp_path / "ledger"]
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(forecast, ["crash: weather in Oslo?"])]
    assert result.ok, result.error
    assert sim_route.requests == 2  # the second attempt bought nothing
    # The tool itself is the agent's code: it ran in both attempts (not a recorded step).
    attempts = [line.split()[0] for line in (tmp_path / "ledger").read_text().splitlines()]
    assert [a.split("/")[1] for a in attempts] == ["1", "2"]


@legion.agent
async def anthropic_tools(ctx: legion.Context, question: str) -> dict[str, object]:
    """The anthropic SDK's tool use round trip, translated to and from legion's call."""
    client = ctx.llm.anthropic()
    tools = [
        {
            "name": "temperature",
            "description": "The temperature in a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    messages: list[dict[str, object]] = [{"role": "user", "content": question}]
    first = await client.messages.create(
        model="sim-model", max_tokens=64, tools=tools, messages=messages
    )
    (use,) = [block for block in first.content if block.type == "tool_use"]
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "21.5"}]}
    )  # fmt: skip
    async with client.messages.stream(
        model="sim-model", max_tokens=64, tools=tools, messages=messages
    ) as stream:
        final = await stream.get_final_message()
    return {
        "stop": first.stop_reason,
        "input": use.input,
        "final_stop": final.stop_reason,
        "text": final.content[0].text if final.content[0].type == "text" else "",
    }


async def test_the_anthropic_sdk_uses_tools_through_legion(
    db_url: str, sim_route: SimRoute
) -> None:
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(anthropic_tools, ["Warm in Oslo?"])]
    assert result.ok, result.error
    assert result.output["stop"] == "tool_use" and set(result.output["input"]) == {"city"}
    assert result.output["final_stop"] == "end_turn" and result.output["text"]
    assert sim_route.requests == 2


durable_weather = Agent(
    output_type=Forecast, instructions="Give the forecast.", deps_type=legion.Context
)


@durable_weather.tool
async def recorded_temperature(run: RunContext[legion.Context], city: str) -> float:
    """The temperature in ``city`` now, its effect recorded as a step of the task."""

    def measure() -> float:
        with LEDGER[0].open("a") as ledger:
            ledger.write(f"{run.deps.attempt} {city}\n")
        return 21.5

    temperature: float = await run.deps.step(f"temperature:{city}", measure)
    return temperature


@legion.agent(retries=1, backoff=0)
async def durable_forecast(ctx: legion.Context, question: str) -> dict[str, object]:
    result = await durable_weather.run(question, model=model(ctx), deps=ctx)
    if ctx.attempt == 1:
        raise RuntimeError("the attempt dies after the run")
    return result.output.model_dump()


async def test_a_tools_effect_in_a_step_runs_once_across_attempts(
    db_url: str, sim_route: SimRoute, tmp_path: Path
) -> None:
    # As the README says: the context as the run's deps, the tool's effect in ctx.step.
    LEDGER[:] = [tmp_path / "ledger"]
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(durable_forecast, ["Weather in Oslo?"])]
    assert result.ok, result.error
    assert sim_route.requests == 2
    # One effect, in the first attempt: the second replayed the answers and the step.
    (line,) = (tmp_path / "ledger").read_text().splitlines()
    assert line.startswith("1 ")
