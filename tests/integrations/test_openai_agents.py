"""The OpenAI Agents SDK's ``Runner.run`` inside a legion agent: a handoff and a tool,
every request a recorded call counted at the simulator."""

from __future__ import annotations

from pathlib import Path

from agents import Agent, Runner, function_tool

import legion
from legion import Runtime
from legion.integrations.openai_agents import run_config
from tests.integrations.conftest import SimRoute

LEDGER: list[Path] = []


@function_tool
def lookup_order(order_id: str) -> str:
    """The status of an order."""
    with LEDGER[0].open("a") as ledger:
        ledger.write(f"{order_id}\n")
    return f"order {order_id} shipped"


orders = Agent(name="orders", instructions="Answer questions about orders.", tools=[lookup_order])
triage = Agent(name="triage", instructions="Hand off to the right agent.", handoffs=[orders])


@legion.agent(retries=1, backoff=0)
async def support(ctx: legion.Context, question: str) -> dict[str, str]:
    result = await Runner.run(triage, question, run_config=run_config(ctx))
    if ctx.attempt == 1 and question.startswith("crash"):
        raise RuntimeError("the attempt dies after the run")
    return {"agent": result.last_agent.name, "answer": str(result.final_output)}


async def test_a_handoff_and_a_tool_through_legion(
    db_url: str, sim_route: SimRoute, tmp_path: Path
) -> None:
    LEDGER[:] = [tmp_path / "ledger"]
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(support, ["Where is my order?"])]
    assert result.ok, result.error
    assert result.output["agent"] == "orders"  # the handoff happened
    assert result.output["answer"]
    # triage hands off; orders calls the tool, then answers.
    assert result.usage is not None and result.usage["llm_calls"] == 3
    assert sim_route.requests == 3
    assert len((tmp_path / "ledger").read_text().splitlines()) == 1


async def test_a_rerun_buys_no_recorded_request(
    db_url: str, sim_route: SimRoute, tmp_path: Path
) -> None:
    LEDGER[:] = [tmp_path / "ledger"]
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(support, ["crash: where is it?"])]
    assert result.ok, result.error
    assert result.output["agent"] == "orders"
    assert sim_route.requests == 3
