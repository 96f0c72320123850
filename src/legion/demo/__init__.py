"""``legion demo``: sequential vs throughput scaling, measured on the example agent.

`legion.demo.agent` is the agent (search a local FTS5 index of Python's own
documentation, summarize the hits with parallel LLM calls, save the answer);
`legion.demo.compare` runs it over a sample of questions against the in-process
provider simulator, first the legacy way and then scaled, and measures both;
`legion.demo.report` writes the self-contained HTML report;
`legion.demo.sequential` is the same comparison over N as a ``legion bench`` scenario.
"""

from legion.demo.agent import answer_sequentially, questions_for, research, sample_questions

__all__ = ["answer_sequentially", "questions_for", "research", "sample_questions"]
