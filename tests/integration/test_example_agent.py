"""``examples/research.py`` is the agent a newcomer reads; ``legion.demo.agent`` is the
copy that ``legion demo`` runs from an installed package. Both answer the shipped
questions the same way against the simulator (its completions depend only on the
model and the messages), so the two cannot drift apart unnoticed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from legion import Runtime, TaskStatus
from legion.agent import Agent
from legion.demo import agent as packaged
from legion.llm import Capacity, LLMClient, Route, SimulatedProvider
from legion.loader import load_agent, load_module
from legion.sim import SimConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def _answers(agent: Agent, questions: list[str], db: Path) -> Any:
    """The agent's outputs over ``questions``, against a simulator of its own."""
    sim = SimulatedProvider(SimConfig(models=("sim-model",)))
    await sim.start()
    llm = LLMClient([Route("default", sim, "sim-model", Capacity("default"))])
    async with llm, Runtime(f"sqlite:///{db}", llm=llm) as rt:
        results = [r async for r in rt.map(agent, questions)]
    assert all(r.status is TaskStatus.SUCCEEDED for r in results), results
    return sorted((r.output for r in results), key=lambda o: o["question"])


async def test_the_example_and_the_demo_agent_give_the_same_answers(tmp_path: Path) -> None:
    example = load_agent(f"{EXAMPLES / 'research.py'}:research")
    lines = [json.loads(line) for line in (EXAMPLES / "questions.jsonl").read_text().splitlines()]
    questions = [q["question"] if isinstance(q, dict) else q for q in lines]
    assert len(questions) == 20
    mine = await _answers(example, questions, tmp_path / "example.db")
    theirs = await _answers(packaged.research, questions, tmp_path / "demo.db")
    assert mine == theirs
    assert all(o["answer"] and len(o["sources"]) == packaged.HITS for o in mine)


def test_the_example_is_a_whole_agent_not_a_re_export() -> None:
    module = load_module(str(EXAMPLES / "research.py"))
    for name in ("search", "read", "partial_prompt", "combine_prompt"):
        assert getattr(module, name).__module__ == module.__name__, name
    assert module.research.fn.__module__ == module.__name__
    code = (EXAMPLES / "research.py").read_text().split('"""', 2)[2]
    assert "legion.demo" not in code  # it imports nothing from the package's copy


async def test_a_session_remembers_every_question_its_tasks_ran_at_once(tmp_path: Path) -> None:
    # The example read the session's list, added its question and wrote it back: ten
    # tasks of one session at once kept one question (the last writer's).
    example = load_agent(f"{EXAMPLES / 'research.py'}:research")
    sim = SimulatedProvider(SimConfig(models=("sim-model",)))
    await sim.start()
    llm = LLMClient([Route("default", sim, "sim-model", Capacity("default"))])
    questions = [f"How do I use asyncio {n}?" for n in range(10)]
    async with llm, Runtime(f"sqlite:///{tmp_path / 's.db'}", llm=llm) as rt:
        results = [r async for r in rt.map(example, questions, session="alice")]
        remembered = await rt.store.memory_items("alice")
    assert all(r.ok for r in results)
    assert sorted(json.loads(v) for v in remembered.values()) == sorted(questions)
