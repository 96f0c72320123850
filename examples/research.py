"""Example agent: answer a question about Python from a local corpus, offline.

search    - full-text search (SQLite FTS5) over the Python documentation topics that
            ship with the standard library (``pydoc_data``), so nothing is downloaded;
read      - the top hits are read concurrently (``ctx.gather``), each one a recorded step
            that keeps the sentences that best match the question;
summarize - one LLM call per passage, concurrently (``ctx.llm``), then one that combines
            them: against the built-in simulator unless ``--llm`` names a real provider;
memory    - the session remembers the questions it was asked.

The agent ships inside the package (``legion.demo.agent``), where ``legion demo`` runs
it the legacy way and scaled, side by side; this file only names it, so the two never
drift apart. Run it (add ``--llm openai:gpt-4o-mini`` and set OPENAI_API_KEY for a real
model):

    legion run examples/research.py:research \\
        --input examples/questions.jsonl --output answers.jsonl
"""

from __future__ import annotations

from legion.demo.agent import read, research, search

__all__ = ["read", "research", "search"]
