"""LangChain's ``ChatOpenAI`` on ``ctx.llm``, and a small LangGraph graph (model, tool,
model) run as one legion agent, every model call counted at the simulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import BaseModel

import legion
from legion import Runtime
from legion.integrations.langchain import chat_model
from tests.integrations.conftest import SimRoute

LEDGER: list[Path] = []


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    with LEDGER[0].open("a") as ledger:
        ledger.write(f"{a}*{b}\n")
    return a * b


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_graph(ctx: legion.Context) -> Any:
    llm = chat_model(ctx).bind_tools([multiply])

    async def think(state: State) -> dict[str, list[AnyMessage]]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(State)
    graph.add_node("think", think)
    graph.add_node("tools", ToolNode([multiply]))
    graph.add_edge(START, "think")
    graph.add_conditional_edges("think", tools_condition)
    graph.add_edge("tools", "think")
    graph.add_edge("think", END)
    return graph.compile()


@legion.agent(retries=1, backoff=0)
async def calculate(ctx: legion.Context, question: str) -> dict[str, Any]:
    state = await build_graph(ctx).ainvoke({"messages": [HumanMessage(question)]})
    if ctx.attempt == 1 and question.startswith("crash"):
        raise RuntimeError("the attempt dies after the graph")
    messages = state["messages"]
    return {"kinds": [m.type for m in messages], "answer": messages[-1].content}


class Verdict(BaseModel):
    label: str
    score: int


@legion.agent
async def classify(ctx: legion.Context, text: str) -> dict[str, Any]:
    verdict = await chat_model(ctx).with_structured_output(Verdict).ainvoke(text)
    assert isinstance(verdict, Verdict)
    streamed = [chunk.content async for chunk in chat_model(ctx).astream(text)]
    return {**verdict.model_dump(), "streamed": "".join(str(c) for c in streamed)}


async def test_a_langgraph_graph_runs_as_one_legion_agent(
    db_url: str, sim_route: SimRoute, tmp_path: Path
) -> None:
    LEDGER[:] = [tmp_path / "ledger"]
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(calculate, ["What is 3 times 4?"])]
    assert result.ok, result.error
    assert result.output["kinds"] == ["human", "ai", "tool", "ai"]
    assert result.output["answer"]
    assert result.usage is not None and result.usage["llm_calls"] == 2
    assert sim_route.requests == 2
    assert (tmp_path / "ledger").read_text() == "3*3\n"  # the simulator's arguments


async def test_a_rerun_of_the_graph_buys_no_recorded_call(
    db_url: str, sim_route: SimRoute, tmp_path: Path
) -> None:
    LEDGER[:] = [tmp_path / "ledger"]
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(calculate, ["crash: 3 times 4?"])]
    assert result.ok, result.error
    assert sim_route.requests == 2


async def test_structured_output_and_streaming_with_chat_openai(
    db_url: str, sim_route: SimRoute
) -> None:
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(classify, ["I loved it"])]
    assert result.ok, result.error
    assert result.output["label"] and result.output["score"] == 3
    assert result.output["streamed"]
    assert sim_route.requests == 2


@legion.agent(retries=3)
async def sync_node(ctx: legion.Context, question: str) -> str:
    llm = chat_model(ctx)

    def think(state: State) -> dict[str, list[AnyMessage]]:  # a plain def: a sync call
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(State)
    graph.add_node("think", think)
    graph.add_edge(START, "think")
    graph.add_edge("think", END)
    state = await graph.compile().ainvoke({"messages": [HumanMessage(question)]})
    return str(state["messages"][-1].content)


async def test_a_sync_call_fails_at_once_and_says_to_await_ainvoke(
    db_url: str, sim_route: SimRoute
) -> None:
    """A node calling ``llm.invoke()`` went around legion: its client was OpenAI's
    default, at api.openai.com (a connection error here, retried; with a network, the
    prompt sent to OpenAI whatever route the run named)."""
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (result,) = [r async for r in rt.map(sync_node, ["2 * 3?"])]
    assert result.status is legion.TaskStatus.FAILED  # not retried: it cannot succeed
    assert result.error is not None and result.error.type == "Permanent"
    assert "await llm.ainvoke(...)" in result.error.message
    assert sim_route.requests == 0


def test_the_first_model_made_in_a_task_loads_nothing() -> None:
    # The first ChatOpenAI made in a process imported its HTTP stack (~0.1 s, 0.7 s on a
    # busy machine): in the first task, where it blocked the loop and was reported as the
    # agent's doing. The integration's import makes one first.
    script = (
        "import sys\n"
        "import legion.integrations.langchain\n"
        "from langchain_openai import ChatOpenAI\n"
        "before = set(sys.modules)\n"
        "ChatOpenAI(model='m', api_key='k', base_url='http://127.0.0.1:1/v1')\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@legion.agent(retries=0)
async def carried_over(ctx: legion.Context, how: str) -> str:
    if how == "model":  # as ChatOpenAI(model=...) is written
        llm = chat_model(ctx, model="default", temperature=0)
    else:
        llm = chat_model(ctx, model="default", max_retries=3, timeout=30)
    return str((await llm.ainvoke("hi")).content)


async def test_chat_openais_own_keywords_name_the_model_or_are_refused_saying_why(
    db_url: str, sim_route: SimRoute
) -> None:
    # `model=` and `max_retries=`, as a ChatOpenAI is written, failed with "got multiple
    # values for keyword argument".
    async with Runtime(db_url, llm=sim_route.client) as rt:
        (named,) = [r async for r in rt.map(carried_over, ["model"])]
        (transport,) = [r async for r in rt.map(carried_over, ["transport"])]
    assert named.status is legion.TaskStatus.SUCCEEDED, named.error
    assert transport.error is not None and transport.error.type == "TypeError"
    assert "takes no max_retries, timeout: legion makes the calls" in transport.error.message
