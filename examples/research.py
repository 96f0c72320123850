"""Example agent: answer a question about Python from a local corpus, offline.

search    - full-text search (SQLite FTS5) over the Python documentation topics that
            ship with the standard library (``pydoc_data``), so nothing is downloaded;
read      - the top hits are read concurrently (``ctx.gather``), each one a recorded step
            that keeps the sentences that best match the question;
summarize - one LLM call per passage, concurrently (``ctx.llm``), then one that combines
            them: against the built-in simulator unless ``--llm`` names a real provider;
memory    - the session remembers the questions it was asked.

Run it (add ``--llm openai:gpt-4o-mini`` and set OPENAI_API_KEY for a real model):

    legion run examples/research.py:research \\
        --input examples/questions.jsonl --output answers.jsonl
"""

from __future__ import annotations

import re
import sqlite3
from functools import cache

import legion

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


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


def search(question: str, limit: int = 3) -> list[dict[str, str]]:
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


async def read(hit: dict[str, str], question: str) -> dict[str, str]:
    """Keep the two sentences of a passage that share most words with the question."""
    words = set(_WORD.findall(question.lower()))
    sentences = _SENTENCE.split(hit["text"])
    ranked = sorted(sentences, key=lambda s: -len(words & set(_WORD.findall(s.lower()))))
    return {"topic": hit["topic"], "summary": " ".join(ranked[:2])[:400]}


def _prompt(question: str, note: dict[str, str]) -> list[dict[str, str]]:
    excerpt = f"Excerpt ({note['topic']}): {note['summary']}"
    return [
        {"role": "system", "content": "Answer from the excerpt only, in one or two sentences."},
        {"role": "user", "content": f"Question: {question}\n\n{excerpt}"},
    ]


@legion.agent(timeout=60, retries=3)
async def research(ctx: legion.Context, question: str) -> dict[str, object]:
    hits = await ctx.step("search", search, question)
    notes = await ctx.gather(
        *(ctx.step(f"read-{i}", read, h, question) for i, h in enumerate(hits))
    )
    # One LLM call per passage, all at once; then one that combines them.
    partial = await ctx.gather(*(ctx.llm.chat(_prompt(question, n), max_tokens=120) for n in notes))
    combined = "\n".join(f"- {p.text}" for p in partial)
    answer = await ctx.llm.chat(
        [
            {
                "role": "user",
                "content": f"Question: {question}\nCombine into one answer:\n{combined}",
            }
        ],
        max_tokens=200,
    )
    asked = await ctx.memory.get("questions", [])
    await ctx.memory.set("questions", [*asked, question][-20:])
    return {
        "question": question,
        "answer": answer.text,
        "sources": [n["topic"] for n in notes],
        "notes": notes,
    }
