"""Example: a Pydantic AI agent (a tool, structured output) run by legion.

    legion sim --tool-calls --port 8000 &      # a simulator that calls the tools offered
    echo '{"question": "Weather in Paris?"}' > q.jsonl
    legion run examples/pydantic_ai_agent.py:forecast -i q.jsonl -o out.jsonl \\
        --llm openai:sim-model@http://127.0.0.1:8000/v1

Needs ``pip install 'legion-runtime[pydantic-ai]'``. With ``--llm openai:gpt-4o-mini``
(and OPENAI_API_KEY) it asks a real model. The Pydantic AI agent is written as usual;
only the model line changes: ``model=legion.integrations.pydantic_ai.model(ctx)``.
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_ai import Agent

import legion
from legion.integrations.pydantic_ai import model


class Forecast(BaseModel):
    city: str
    summary: str
    warm: bool


weather = Agent(output_type=Forecast, instructions="Give a short forecast for the city.")


@weather.tool_plain
def temperature(city: str) -> float:
    """The temperature in ``city`` now, in degrees Celsius."""
    return 21.5


@legion.agent(timeout=120, retries=2)
async def forecast(ctx: legion.Context, question: str) -> dict[str, object]:
    result = await weather.run(question, model=model(ctx))  # the one legion line
    return result.output.model_dump()
