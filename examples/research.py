"""Example agent: answer a question about Python from a local corpus, offline.

    legion run examples/research.py:research \\
        --input examples/questions.jsonl --output answers.jsonl

It runs against the built-in LLM simulator; add ``--llm openai:gpt-4o-mini`` (and set
OPENAI_API_KEY) for a real model, or ``--llm local`` for a small one in process.

What one task does, for one question:

1. search    - full-text search (SQLite FTS5, BM25) over the documentation topics that
               ship with Python (``pydoc_data``), so nothing is downloaded;
2. read      - the top hits are read concurrently (``ctx.gather``), each one a recorded
               step that keeps the sentences that best match the question;
3. summarize - one LLM call per passage, all at once, then one that combines them
               (``ctx.llm``: paced to the provider's limits, recorded, never paid twice);
4. remember  - the session keeps every question it was asked (``ctx.memory``).

``legion demo`` runs this same agent (its copy in ``legion.demo.agent``, so the demo
works from an installed package) the legacy way and scaled, side by side; a test keeps
the two copies giving the same answers.
"""

from __future__ import annotations

import re
import sqlite3
from functools import cache
from typing import Any

import legion

HITS = 3  # passages read per question: one LLM call each, then one that combines them
PARTIAL_TOKENS = 120
ANSWER_TOKENS = 200

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@legion.agent(timeout=120, retries=3)
async def research(ctx: legion.Context, question: str) -> dict[str, Any]:
    """Search, read the hits at once, summarize them at once, combine, remember."""
    # A step runs once per task; a retry (or another worker) gets its recorded result.
    hits = await ctx.step("search", search, question)

    # Independent steps run concurrently with ctx.gather; results come back in order.
    notes = await ctx.gather(
        *(ctx.step(f"read-{i}", read, hit, question) for i, hit in enumerate(hits))
    )

    # Every ctx.llm call is a recorded step too, paced by the route's shared capacity.
    partial = await ctx.gather(
        *(ctx.llm.chat(partial_prompt(question, n), max_tokens=PARTIAL_TOKENS) for n in notes)
    )
    answer = await ctx.llm.chat(
        combine_prompt(question, [p.text for p in partial]), max_tokens=ANSWER_TOKENS
    )

    # Session memory lives in the store, so the next task of a session can run anywhere.
    # One key per task: tasks of a session run at once, and a list read, extended and
    # written back would keep only the last writer's question (`ctx.memory.items()`
    # reads them all).
    await ctx.memory.set(f"question:{ctx.task_id}", question)

    return {
        "question": question,
        "answer": answer.text,
        "sources": [n["topic"] for n in notes],
        "notes": notes,
    }


# -- the plain functions the steps call ------------------------------------------------


@cache
def _index() -> sqlite3.Connection:
    """An in-memory FTS5 index of Python's documentation, one row per paragraph."""
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


def partial_prompt(question: str, note: dict[str, str]) -> list[dict[str, str]]:
    """The messages that summarize one passage."""
    excerpt = f"Excerpt ({note['topic']}): {note['summary']}"
    return [
        {"role": "system", "content": "Answer from the excerpt only, in one or two sentences."},
        {"role": "user", "content": f"Question: {question}\n\n{excerpt}"},
    ]


def combine_prompt(question: str, partial: list[str]) -> list[dict[str, str]]:
    """The messages that combine the partial answers into one."""
    combined = "\n".join(f"- {text}" for text in partial)
    return [
        {"role": "user", "content": f"Question: {question}\nCombine into one answer:\n{combined}"}
    ]
