"""Example: a small LangGraph graph (model, tool, model) run as one legion agent.

    legion sim --tool-calls --port 8000 &
    echo '{"question": "What is 6 times 7?"}' > q.jsonl
    legion run examples/langgraph_agent.py:calculate -i q.jsonl -o out.jsonl \\
        --llm openai:sim-model@http://127.0.0.1:8000/v1

Needs ``pip install 'legion-runtime[langchain]'``. The graph is written as usual; only
the model line changes: ``chat_model(ctx)`` (a ``ChatOpenAI``) instead of
``ChatOpenAI(model=...)``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

import legion
from legion.integrations.langchain import chat_model


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_graph(llm: Any) -> Any:
    model = llm.bind_tools([multiply])

    async def think(state: State) -> dict[str, list[AnyMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(State)
    graph.add_node("think", think)
    graph.add_node("tools", ToolNode([multiply]))
    graph.add_edge(START, "think")
    graph.add_conditional_edges("think", tools_condition)
    graph.add_edge("tools", "think")
    return graph.compile()


@legion.agent(timeout=120, retries=2)
async def calculate(ctx: legion.Context, question: str) -> str:
    graph = build_graph(chat_model(ctx))  # the one legion line
    state = await graph.ainvoke({"messages": [HumanMessage(question)]})
    return str(state["messages"][-1].content)
