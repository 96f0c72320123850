"""Example agent: the research agent with its context from vector collections.

retrieve  - the passages nearest to the question in the shared collection ``pydoc`` (the
            Python documentation topics that ship with the standard library, loaded once
            with ``legion vectors load``), instead of full-text search;
remember  - the session's earlier questions live in the session-scoped collection
            ``questions``: each task finds the earlier questions nearest to its own, so a
            follow-up can build on them, on whichever worker it runs. A task is its own
            session unless its line names one (``"_session": "alice"``), and a question
            is remembered once its task has asked it: tasks of one session that run at
            the same moment do not see each other (``--concurrency 1`` runs them in
            order);
summarize - one LLM call per passage at once, then one that combines them, as in
            ``examples/research.py``.

Every ``ctx.vectors`` write and search is a recorded step and every embedding an LLM call
(through the route's capacity, counted in usage): a retried task pays for nothing twice.

    python examples/research_vectors.py pydoc.jsonl            # the corpus, one topic a line
    legion vectors load pydoc --input pydoc.jsonl --store sqlite:///research.db
    legion run examples/research_vectors.py:research --store sqlite:///research.db \\
        --input examples/questions.jsonl --output answers.jsonl

(``examples/questions.jsonl`` gives no ``_session``: each question is answered alone, its
``related_earlier`` empty.)
"""

from __future__ import annotations

import json
import sys
from typing import Any

import legion
from legion.demo.agent import ANSWER_TOKENS, PARTIAL_TOKENS, combine_prompt, partial_prompt

PASSAGES = 3


@legion.agent(timeout=120, retries=3)
async def research(ctx: legion.Context, question: str) -> dict[str, Any]:
    """Retrieve by vector search, recall the session's related questions, summarize."""
    asked = ctx.vectors("questions")  # this session's memory
    hits, earlier = await ctx.gather(
        ctx.vectors("pydoc", scope="shared").search(question, k=PASSAGES),
        asked.search(question, k=2),
    )
    notes = [{"topic": h.metadata.get("topic", h.id), "summary": h.text[:400]} for h in hits]
    partial = await ctx.gather(
        *(ctx.llm.chat(partial_prompt(question, n), max_tokens=PARTIAL_TOKENS) for n in notes)
    )
    answer, _ = await ctx.gather(  # remembering the question needs no answer: at once
        ctx.llm.chat(combine_prompt(question, [p.text for p in partial]), max_tokens=ANSWER_TOKENS),
        asked.add([question], metadata={"task": ctx.task_id}),
    )
    return {
        "question": question,
        "answer": answer.text,
        "sources": [n["topic"] for n in notes],
        "related_earlier": [h.text for h in earlier],
    }


def write_corpus(path: str) -> int:
    """The documentation topics of ``pydoc_data``, one JSON line each (id, topic, text).
    An existing file is replaced only if it is such a corpus (a rerun): anything else
    is the user's, and refused."""
    from pydoc_data.topics import topics

    if not _is_corpus(path):
        sys.exit(f"{path} exists and is not a corpus this script wrote: give a new path")
    with open(path, "w", encoding="utf-8") as out:
        for topic, text in sorted(topics.items()):
            out.write(json.dumps({"id": topic, "topic": topic, "text": text}) + "\n")
    return len(topics)


def _is_corpus(path: str) -> bool:
    """Whether ``path`` is free to write: absent, or a corpus `write_corpus` wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and set(row) == {"id", "topic", "text"}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/research_vectors.py OUT.jsonl")
    print(f"{write_corpus(sys.argv[1])} topics written to {sys.argv[1]}")
