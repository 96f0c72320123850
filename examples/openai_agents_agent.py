"""Example: an OpenAI Agents SDK triage agent handing off to one with a tool, run by
legion.

    legion sim --tool-calls --port 8000 &
    echo '{"question": "Where is order 42?"}' > q.jsonl
    legion run examples/openai_agents_agent.py:support -i q.jsonl -o out.jsonl \\
        --llm openai:sim-model@http://127.0.0.1:8000/v1

Needs ``pip install 'legion-runtime[openai-agents]'``. The agents are written as usual;
only the ``run_config`` line changes (``legion.integrations.openai_agents.run_config``).
"""

from __future__ import annotations

from agents import Agent, Runner, function_tool

import legion
from legion.integrations.openai_agents import run_config


@function_tool
def lookup_order(order_id: str) -> str:
    """The shipping status of an order."""
    return f"order {order_id} shipped yesterday"


orders = Agent(name="orders", instructions="Answer order questions.", tools=[lookup_order])
triage = Agent(name="triage", instructions="Hand off to the right agent.", handoffs=[orders])


@legion.agent(timeout=120, retries=2)
async def support(ctx: legion.Context, question: str) -> dict[str, str]:
    result = await Runner.run(triage, question, run_config=run_config(ctx))  # legion line
    return {"agent": result.last_agent.name, "answer": str(result.final_output)}
