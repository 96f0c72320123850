"""The local embedding model's one thread, taken in turn: a call's timeout counts from its
turn, and a call that ended stops its work. The model itself is stood in for by a gated
one (its numpy forward pass is `test_minilm.py`'s): what is under test is the queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence

import pytest

from legion.errors import ProviderUnavailable
from legion.llm import minilm
from legion.llm.embeddings import EmbedRequest


class GatedModel:
    """Embeds a batch once the test opens `gate` (each batch waits for it); counts them."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches = 0

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        self.started.set()
        self.gate.wait(30)
        self.batches += 1
        return [[0.0] * minilm.DIMENSIONS for _ in texts], len(texts)


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedModel]:
    gated = GatedModel()
    monkeypatch.setattr(minilm, "_shared", gated)
    yield gated
    gated.gate.set()


def request(n: int) -> EmbedRequest:
    return EmbedRequest(minilm.MODEL_NAME, tuple(f"text {i}" for i in range(n)), {})


async def test_a_call_queued_behind_another_is_not_timed_out_by_its_wait(
    model: GatedModel,
) -> None:
    # Two calls at once (a local route lets two in): the second's timeout ran while the
    # first held the thread, and it failed having done nothing.
    first = asyncio.ensure_future(minilm.embed_request(request(4), "local", 60))
    await asyncio.to_thread(model.started.wait, 30)  # the first holds the thread
    second = asyncio.ensure_future(minilm.embed_request(request(4), "local", 0.05))
    await asyncio.sleep(0.3)  # (queued six times its timeout: the condition under test)
    assert not second.done()
    model.gate.set()
    assert len((await first).embeddings.vectors) == 4
    assert len((await second).embeddings.vectors) == 4


async def test_a_call_that_timed_out_stops_its_work_at_the_next_batch(model: GatedModel) -> None:
    # It went on computing all its batches for nobody, and each retry queued behind it.
    call = asyncio.ensure_future(minilm.embed_request(request(10 * 32), "local", 0.05))
    with pytest.raises(ProviderUnavailable, match=r"within 0\.05 s of its turn"):
        await call
    model.gate.set()
    after = await minilm.embed_request(request(1), "local", 60)  # (behind what is left)
    assert len(after.embeddings.vectors) == 1
    assert model.batches == 2  # the first's one batch under way, then this call's
