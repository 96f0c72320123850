"""``legion demo``: sequential vs throughput scaling, measured on the example agent.

:mod:`legion.demo.agent` is the agent (search a local FTS5 index of Python's own
documentation, summarize the hits with parallel LLM calls, save the answer);
:mod:`legion.demo.compare` runs it over a sample of questions against the in-process
provider simulator, first the legacy way and then scaled, and measures both;
:mod:`legion.demo.report` writes the self-contained HTML report;
:mod:`legion.demo.sequential` is the same comparison over N as a ``legion bench`` scenario.
"""

from legion.demo.agent import answer_sequentially, questions_for, research, sample_questions

__all__ = ["answer_sequentially", "questions_for", "research", "sample_questions"]
