"""The demo's agent: answer a question about Python from a local corpus, offline.

- **search**: full-text search (SQLite FTS5, BM25) over the documentation topics that
  ship with the Python standard library (``pydoc_data``), so nothing is downloaded;
- **read**: the top hits are read, keeping the sentences that best match the question;
- **summarize**: one LLM call per passage, then one that combines them;
- **save**: the answer is written to the store (and the session remembers the question).

Two ways to run the same work:

- `research`, a legion agent: the reads and the per-passage calls are gathered
  (``ctx.gather``), every call goes through ``ctx.llm`` (shared, rate-aware capacity), and
  every step is recorded in the store, so a retried task never pays twice;
- `answer_sequentially`, the legacy way: each step awaited in turn, one task after
  the other, the answer saved with a plain SQLite insert and commit.

``examples/research.py`` is the same agent written out for reading (this copy ships
in the package so that ``legion demo`` works where no examples are installed); a test
runs both over the example questions and checks they answer alike.
"""

from __future__ import annotations

import re
import sqlite3
from functools import cache
from importlib import resources
from typing import Any

import orjson

import legion
from legion.llm.client import LLMClient
from legion.llm.types import ChatResponse, Message

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
HITS = 3
"""Passages read per question: one LLM call each, then one that combines them."""
PARTIAL_TOKENS = 120
ANSWER_TOKENS = 200


@cache
def _index() -> sqlite3.Connection:
    """An in-memory FTS5 index of the documentation, one row per paragraph."""
    from pydoc_data.topics import topics

    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE VIRTUAL TABLE passages USING fts5(topic, body)")
    rows = []
    for topic, text in topics.items():
        for para in re.split(r"\n\s*\n", text):
            body = " ".join(para.split())
            if len(body) > 80:
                rows.append((topic, body))
    db.executemany("INSERT INTO passages VALUES (?, ?)", rows)
    return db


def search(question: str, limit: int = HITS) -> list[dict[str, str]]:
    """The passages that best match the question's words (BM25)."""
    words = [w for w in _WORD.findall(question.lower()) if len(w) > 2]
    if not words:
        return []
    query = " OR ".join(f'"{w}"' for w in words)
    rows = _index().execute(
        "SELECT topic, body FROM passages WHERE passages MATCH ? ORDER BY rank LIMIT ?",
        (query, limit),
    )
    return [{"topic": t, "text": b} for t, b in rows]


def read(hit: dict[str, str], question: str) -> dict[str, str]:
    """Keep the two sentences of a passage that share most words with the question."""
    words = set(_WORD.findall(question.lower()))
    sentences = _SENTENCE.split(hit["text"])
    ranked = sorted(sentences, key=lambda s: -len(words & set(_WORD.findall(s.lower()))))
    return {"topic": hit["topic"], "summary": " ".join(ranked[:2])[:400]}


def partial_prompt(question: str, note: dict[str, str]) -> list[Message]:
    """The messages that summarize one passage."""
    excerpt = f"Excerpt ({note['topic']}): {note['summary']}"
    return [
        {"role": "system", "content": "Answer from the excerpt only, in one or two sentences."},
        {"role": "user", "content": f"Question: {question}\n\n{excerpt}"},
    ]


def combine_prompt(question: str, partial: list[str]) -> list[Message]:
    """The messages that combine the partial answers into one."""
    combined = "\n".join(f"- {text}" for text in partial)
    return [
        {"role": "user", "content": f"Question: {question}\nCombine into one answer:\n{combined}"}
    ]


def _answer(question: str, notes: list[dict[str, str]], answer: ChatResponse) -> dict[str, Any]:
    return {
        "question": question,
        "answer": answer.text,
        "sources": [n["topic"] for n in notes],
        "notes": notes,
    }


@legion.agent(timeout=120, retries=3)
async def research(ctx: legion.Context, question: str) -> dict[str, Any]:
    """Search, read the hits at once, summarize them at once, combine, save."""
    hits = await ctx.step("search", search, question)
    notes = await ctx.gather(
        *(ctx.step(f"read-{i}", read, hit, question) for i, hit in enumerate(hits))
    )
    partial = await ctx.gather(
        *(ctx.llm.chat(partial_prompt(question, n), max_tokens=PARTIAL_TOKENS) for n in notes)
    )
    answer = await ctx.llm.chat(
        combine_prompt(question, [p.text for p in partial]), max_tokens=ANSWER_TOKENS
    )
    # One key per task: tasks of a session run at once, and a list read, extended and
    # written back would keep only the last writer's question (`ctx.memory.items()`
    # reads them all).
    await ctx.memory.set(f"question:{ctx.task_id}", question)
    return _answer(question, notes, answer)


class AnswerTable:
    """Where the legacy run saves its answers: one SQLite table, one commit per answer."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (id INTEGER PRIMARY KEY, question TEXT, "
            "answer TEXT)"
        )

    def save(self, question: str, answer: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO answers (question, answer) VALUES (?, ?)",
            (question, orjson.dumps(answer).decode()),
        )
        self._db.commit()

    def count(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM answers").fetchone()
        return int(n)

    def close(self) -> None:
        self._db.close()


async def answer_sequentially(question: str, llm: LLMClient, table: AnswerTable) -> dict[str, Any]:
    """The same work done the legacy way: every step awaited in turn."""
    hits = search(question)
    notes = [read(hit, question) for hit in hits]
    partial = []
    for note in notes:
        response = await llm.chat(partial_prompt(question, note), max_tokens=PARTIAL_TOKENS)
        partial.append(response.text)
    answer = await llm.chat(combine_prompt(question, partial), max_tokens=ANSWER_TOKENS)
    result = _answer(question, notes, answer)
    table.save(question, result)
    return result


def sample_questions() -> list[str]:
    """The questions shipped with the package (``legion/demo/questions.jsonl``)."""
    text = resources.files("legion.demo").joinpath("questions.jsonl").read_text("utf-8")
    questions = []
    for line in text.splitlines():
        if not line.strip():
            continue
        value = orjson.loads(line)
        questions.append(value["question"] if isinstance(value, dict) else str(value))
    return questions


def questions_for(tasks: int) -> list[str]:
    """``tasks`` questions: the sample, repeated as often as needed (each repeat numbered,
    so every task is a distinct input)."""
    sample = sample_questions()
    out = []
    for i in range(tasks):
        q = sample[i % len(sample)]
        out.append(q if i < len(sample) else f"{q} ({i // len(sample) + 1})")
    return out
