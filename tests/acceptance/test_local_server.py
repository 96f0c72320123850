"""Interop with an OpenAI-compatible server legion did not write: llama-cpp-python's own
``python -m llama_cpp.server``, started as a real process on loopback with the packaged
model, and an agent calling it through legion's `OpenAIProvider`.

The server runs with ``--chat_format vicuna`` (``USER: ... ASSISTANT:``): the GGUF's own
chat template is Gemma's instruction-tuned turn format, which this *base* model answers
with an immediate end of turn (an empty completion).

What the server does not do, and legion copes with: it ignores
``stream_options.include_usage``, so a streamed completion carries no usage and
`LLMClient` charges the call its estimate instead.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.errors import ProviderUnavailable
from legion.llm import Capacity, ChatRequest, LLMClient, OpenAIProvider, Route
from tests.acceptance.conftest import wait_for
from tests.llm.test_local_model import packaged_gguf

pytestmark = pytest.mark.slow

MODEL = "gemma-3-270m"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """llama-cpp-python's server on a free loopback port, once /v1/models answers."""
    gguf = packaged_gguf()
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            MODEL,
            "--chat_format",
            "vicuna",
            "--n_ctx",
            "1024",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    running = Server(process, f"http://127.0.0.1:{port}/v1")
    try:
        wait_for(
            lambda: process.poll() is not None or _answers(f"{running.base_url}/models"),
            timeout=120,
            what="llama_cpp.server to answer /v1/models",
        )
        assert process.poll() is None, (tmp_path / "server.log").read_text()
        yield running
    finally:
        running.stop()
        log.close()


def client(server: Server) -> LLMClient:
    provider = OpenAIProvider(base_url=server.base_url, name="llama-cpp-server")
    return LLMClient([Route("default", provider, MODEL, Capacity("llama-cpp", max_in_flight=1))])


async def test_an_agent_gets_completions_usage_and_streams_from_llama_cpp_server(
    server: Server, db_url: str
) -> None:
    @legion.agent(timeout=120, retries=0)
    async def ask(ctx: legion.Context, question: str) -> dict[str, object]:
        messages = [{"role": "user", "content": question}]
        plain = await ctx.llm.chat(messages, max_tokens=24, temperature=0, stop=["USER:"])
        streamed = await ctx.llm.chat(messages, max_tokens=24, temperature=0, stream=True)
        return {"plain": plain.to_json(), "streamed": streamed.to_json()}

    llm = client(server)
    async with llm, Runtime(db_url, llm=llm) as rt:
        result = await rt.result((await rt.submit(ask, "What is the capital of France?")).id)
        stats = llm.statistics().routes["default"]
    assert result.status is TaskStatus.SUCCEEDED, result.error
    assert isinstance(result.output, dict)
    plain, streamed = result.output["plain"], result.output["streamed"]
    assert plain["text"].strip() and "USER:" not in plain["text"]  # the stop sequence held
    assert plain["finish_reason"] in ("stop", "length")
    assert plain["model"] == MODEL and plain["provider"] == "llama-cpp-server"
    assert plain["usage"]["prompt_tokens"] > 0 and plain["usage"]["completion_tokens"] > 0
    assert streamed["text"].strip() and streamed["finish_reason"] in ("stop", "length")
    assert streamed["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}  # not sent
    assert (stats.calls, stats.succeeded, stats.attempts) == (2, 2, 2)
    assert stats.usage.completion_tokens == plain["usage"]["completion_tokens"]
    assert stats.capacity.tokens_used > stats.usage.total  # the stream charged its estimate
    assert result.usage is not None and result.usage["llm_calls"] == 2


async def test_a_stopped_server_is_a_clear_transient_error(server: Server) -> None:
    provider = OpenAIProvider(base_url=server.base_url, name="llama-cpp-server")
    request = ChatRequest(MODEL, ({"role": "user", "content": "Hi"},), {"max_tokens": 4})
    try:
        answer = await provider.chat(request, timeout=60)
        assert answer.response.usage.prompt_tokens > 0
        server.stop()
        errors = []
        for stream in (False, True, False):
            with pytest.raises(ProviderUnavailable) as caught:
                await provider.chat(
                    ChatRequest(MODEL, request.messages, request.params, stream), timeout=10
                )
            errors.append(caught.value)
        for error in errors:
            assert error.retryable and error.provider == "llama-cpp-server"
            assert str(error).startswith("llama-cpp-server connection failed: ")
        # The first call may find its pooled connection closed under it ("Server
        # disconnected"); once that is gone, a new connection is refused, naming the address.
        host = server.base_url.removeprefix("http://").removesuffix("/v1")
        assert f"Cannot connect to host {host}" in str(errors[-1])
    finally:
        await provider.aclose()
