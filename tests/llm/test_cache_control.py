"""Prompt caching hints (``cache_control``) go through to Anthropic as given."""

from __future__ import annotations

from legion.llm.anthropic import build_payload
from legion.llm.types import ChatRequest


def test_cache_control_on_system_and_user_blocks_is_kept() -> None:
    hint = {"type": "ephemeral"}
    messages = (
        {
            "role": "system",
            "content": [{"type": "text", "text": "A long manual.", "cache_control": hint}],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Context", "cache_control": hint},
                {"type": "text", "text": "Question?"},
            ],
        },
    )
    payload = build_payload(ChatRequest("m", messages, {}, False), "anthropic", 64)
    assert payload["system"] == [{"type": "text", "text": "A long manual.", "cache_control": hint}]
    assert payload["messages"][0]["content"][0]["cache_control"] == hint


def test_a_system_prompt_without_hints_stays_text() -> None:
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    payload = build_payload(ChatRequest("m", messages, {}, False), "anthropic", 64)
    assert payload["system"] == "Be brief."
