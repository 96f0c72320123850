"""Configuration of the provider simulator.

`SimConfig` gathers every knob of the simulator in one immutable value. All
values are checked when the object is built, so an invalid configuration
fails early with a `ValueError` naming the offending field, whether it comes
from Python code, the command line or a TOML file (`SimConfig.from_mapping`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

WindowKind = Literal["sliding", "fixed"]
LatencyDistribution = Literal["uniform", "lognormal"]

_WINDOW_KINDS: tuple[str, ...] = ("sliding", "fixed")
_LATENCY_DISTRIBUTIONS: tuple[str, ...] = ("uniform", "lognormal")
_FAULT_RATES: tuple[str, ...] = (
    "error_rate",
    "hang_rate",
    "malformed_rate",
    "stall_rate",
    "ping_rate",
)


WINDOW_SECONDS = 60.0
"""How long the windows of the per-minute limits are."""


def units_per_window(limit: int, window_seconds: float, name: str = "limit") -> int:
    """How many units a window of ``window_seconds`` admits of a per-minute ``limit``:
    the whole units within it. A window that would admit less than one, or lose more
    than 1 % of the limit to the rounding (``--rpm 90`` over 1 s windows: 1.5 a window),
    is refused with a `ValueError` naming ``name``, rather than enforced as another
    limit than the one configured."""
    exact = limit * window_seconds / WINDOW_SECONDS
    whole = math.floor(exact + 1e-9)
    if whole >= 1 and (exact - whole) <= exact * 0.01:
        return whole
    step = WINDOW_SECONDS / window_seconds
    fits = sorted({round(step * n) for n in (max(1, whole), whole + 1)})
    longer = math.ceil(WINDOW_SECONDS / limit * max(1, math.ceil(exact)) * 100) / 100
    raise ValueError(
        f"{name} {limit:,} over windows of {window_seconds:g} s is {exact:.3g} a window, and a "
        f"window admits whole units: give a {name} of {' or '.join(f'{n:,}' for n in fits)} "
        f"(a multiple of {step:g}), or windows of at least {longer:g} s"
    )


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Every setting of the simulator, with defaults that behave like a fast,
    unlimited, fault-free provider.

    Models:
        models: model names served; a request naming another model gets a 404
            ``model_not_found`` error, as real providers answer.

    Rate limits (``None`` disables a limit):
        rpm: requests per 60 s window.
        tpm: tokens per 60 s window. A request is charged its estimated prompt
            tokens plus its ``max_tokens`` (or ``max_completion_tokens``); when
            the request sets neither, the completion length the simulator will
            produce is charged instead. The charge is made on admission and is
            never refunded, as OpenAI does.
        itpm, otpm: input and output tokens per 60 s window, counted apart as
            Anthropic does: input is the prompt less the tokens read from the
            prompt cache (``cached_prompt_share``), which Anthropic does not
            count; output is the completion produced (Anthropic reserves
            ``max_tokens`` and adjusts to the real count at the end). Answers
            carry ``anthropic-ratelimit-{input,output}-tokens-*`` headers.
        max_concurrency: requests being served at the same time.
        window: ``"sliding"`` (capacity comes back 60 s after it was used) or
            ``"fixed"`` (all capacity comes back at each 60 s boundary).
        window_seconds: the length of the windows that enforce the per-minute
            limits (default 60). Shorter windows enforce the same rate in
            proportion, as providers that quantize their limits do: 6,000 rpm
            over 1 s windows admits 100 requests a second, not a 6,000 burst. A
            request larger than one window's tokens is refused as too large (a
            provider refuses only one larger than its minute's).
        rejected_count_against_limit: when true, requests answered 429 also
            consume the request window, as OpenAI documents for its API.
        concurrency_retry_after: Retry-After, in seconds, sent when the
            concurrency limit rejects a request (no window tells when a slot
            frees up).

    Latency:
        latency: base delay in seconds before the first byte of an answer
            (time to first token).
        latency_jitter: scale of the random extra delay added to ``latency``.
        latency_distribution: ``"uniform"`` draws the extra delay from
            ``[0, latency_jitter)``; ``"lognormal"`` draws it from a lognormal
            with median ``latency_jitter`` (sigma 1), giving a long tail.
        tokens_per_second: generation speed of the completion; ``None`` means
            the completion is produced instantly.

    Completions:
        min_output_tokens, max_output_tokens: bounds of the completion length
            chosen from the prompt, before the request's ``max_tokens`` cap.
        cached_prompt_share: the share of each prompt's tokens that a
            non-streamed answer reports as read from a prompt cache (OpenAI:
            ``prompt_tokens_details.cached_tokens``; Anthropic:
            ``cache_read_input_tokens``, the rest as ``input_tokens``); 0 by
            default.
        tool_calls: answer requests that offer ``tools`` with a call to the next tool
            not yet called, and those asking for a ``json_schema`` response format with
            JSON of that schema (`legion.sim.tools`), so agent frameworks run their loops
            to the end; off by default (tools are accepted and ignored).

    Faults (fractions of admitted requests, at most 1 in total):
        error_rate: answer with one of ``error_statuses`` (500 or 503).
        error_statuses: the server error statuses injected, used in turn
            across the error band of the random draw.
        hang_rate: never answer; the request waits until the client gives up,
            the simulator stops, or ``hang_seconds`` pass (then 504).
        hang_seconds: upper bound of a hang.
        malformed_rate: answer 200 with a body that is not valid JSON (or, when
            streaming, an event whose data is not valid JSON).
        stall_rate: streaming only: stop sending mid-stream, like a hang
            between two chunks, until the client gives up or the simulator
            stops (the stream then ends without ``[DONE]``), or at most
            ``hang_seconds``. Non-streaming requests drawing a stall are
            served normally.
        ping_rate: streaming only: send the headers, then only keep-alive
            comments (``: ping``) every ``ping_interval`` seconds, no event,
            until the client gives up or the simulator stops (or at most
            ``hang_seconds``). Non-streaming requests drawing it are served
            normally.
        ping_interval: seconds between two keep-alive comments.
        outage_after, outage_requests: an outage: the admitted requests
            numbered ``outage_after + 1`` to ``outage_after +
            outage_requests`` (in arrival order, from 1) are answered 503,
            whatever the fault draws say; 0 requests: no outage.
        padding_bytes: bytes of padding in every successful answer: a
            ``padding`` string field of the completion body, or, when
            streaming, one event after the first whose JSON carries it (a chunk
            with no choices on OpenAI's route, a ``ping`` on Anthropic's), to try
            clients' size limits.
        seed: seed of the random generator deciding faults and jitter.

    Scheduled faults (a provider's bad minute, rehearsed):
        fault_schedule: ``(start, end, status)`` spans, in seconds since the
            simulator started: every chat request that arrives in
            ``[start, end)`` is answered ``status`` (429 or a 5xx) at once,
            without being admitted (a 429 says ``Retry-After: 1`` unless
            ``rate_limit_headers`` is false). Spans may not overlap.
        rate_limit_headers: when false, answers carry no ``x-ratelimit-*``,
            ``Retry-After`` or ``retry-after-ms`` headers, as vLLM and most
            gateways answer: a client must find the limit on its own.

    Batches (`legion.sim.batches`):
        batch_turnaround: seconds from a batch's creation until it ends with every
            request answered (OpenAI's Batch API, Anthropic's Message Batches); 0 by
            default: a batch has ended when first looked at.

    Access:
        api_key: when set, ``/v1/*`` requires ``Authorization: Bearer <key>``
            (``/v1/messages`` also takes it as ``x-api-key``, as Anthropic does).
        limits_per_key: when true, each API key presented gets its own rate
            limits (every limit above, per key), as providers limit each
            organisation or project: a pool of keys has the sum of their limits.
            ``GET /stats`` then counts admissions and 429s by key.
    """

    models: tuple[str, ...] = ("sim-model",)
    rpm: int | None = None
    tpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    max_concurrency: int | None = None
    window: WindowKind = "sliding"
    window_seconds: float = 60.0
    rejected_count_against_limit: bool = False
    concurrency_retry_after: float = 1.0
    latency: float = 0.0
    latency_jitter: float = 0.0
    latency_distribution: LatencyDistribution = "uniform"
    tokens_per_second: float | None = None
    min_output_tokens: int = 8
    max_output_tokens: int = 64
    cached_prompt_share: float = 0.0
    tool_calls: bool = False
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 503)
    hang_rate: float = 0.0
    hang_seconds: float = 600.0
    malformed_rate: float = 0.0
    stall_rate: float = 0.0
    ping_rate: float = 0.0
    ping_interval: float = 1.0
    padding_bytes: int = 0
    outage_after: int = 0
    outage_requests: int = 0
    seed: int = 0
    fault_schedule: tuple[tuple[float, float, int], ...] = ()
    rate_limit_headers: bool = True
    api_key: str | None = None
    limits_per_key: bool = False
    batch_turnaround: float = 0.0

    def __post_init__(self) -> None:
        _check_models(self.models)
        for name in ("rpm", "tpm", "itpm", "otpm", "max_concurrency"):
            _check_optional_positive_int(name, getattr(self, name))
        _check_choice("window", self.window, _WINDOW_KINDS)
        _check_number("window_seconds", self.window_seconds, positive=True)
        if self.window_seconds > 60.0:
            raise ValueError("window_seconds must be at most 60")
        for name in ("rpm", "tpm", "itpm", "otpm"):
            limit = getattr(self, name)
            if limit is not None:
                units_per_window(limit, self.window_seconds, name)
        _check_bool("rejected_count_against_limit", self.rejected_count_against_limit)
        _check_number("concurrency_retry_after", self.concurrency_retry_after, positive=True)
        _check_number("latency", self.latency)
        _check_number("latency_jitter", self.latency_jitter)
        _check_choice("latency_distribution", self.latency_distribution, _LATENCY_DISTRIBUTIONS)
        if self.tokens_per_second is not None:
            _check_number("tokens_per_second", self.tokens_per_second, positive=True)
        _check_positive_int("min_output_tokens", self.min_output_tokens)
        _check_positive_int("max_output_tokens", self.max_output_tokens)
        if self.max_output_tokens < self.min_output_tokens:
            raise ValueError(
                f"max_output_tokens ({self.max_output_tokens}) must be >= "
                f"min_output_tokens ({self.min_output_tokens})"
            )
        _check_number("cached_prompt_share", self.cached_prompt_share)
        if self.cached_prompt_share > 1:
            raise ValueError(
                f"cached_prompt_share must be between 0 and 1, got {self.cached_prompt_share!r}"
            )
        _check_error_statuses(self.error_statuses)
        _check_number("hang_seconds", self.hang_seconds, positive=True)
        for name in _FAULT_RATES:
            value = getattr(self, name)
            _check_number(name, value)
            if value > 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        total = sum(getattr(self, name) for name in _FAULT_RATES)
        if total > 1 + 1e-9:
            raise ValueError(f"{' + '.join(_FAULT_RATES)} must be <= 1, got {total:g}")
        _check_number("ping_interval", self.ping_interval, positive=True)
        if isinstance(self.padding_bytes, bool) or not isinstance(self.padding_bytes, int):
            raise ValueError(f"padding_bytes must be an integer, got {self.padding_bytes!r}")
        if self.padding_bytes < 0:
            raise ValueError(f"padding_bytes must be >= 0, got {self.padding_bytes!r}")
        for name in ("outage_after", "outage_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        _check_fault_schedule(self.fault_schedule)
        _check_bool("rate_limit_headers", self.rate_limit_headers)
        _check_bool("limits_per_key", self.limits_per_key)
        _check_number("batch_turnaround", self.batch_turnaround)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SimConfig:
        """Build a configuration from plain data (a parsed TOML table, JSON...).

        Keys are field names. Lists are accepted where a tuple is expected.
        Unknown keys and invalid values raise `ValueError`.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown simulator setting(s): {', '.join(unknown)}; "
                f"known settings: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = dict(values)
        for name in ("models", "error_statuses"):
            if name in kwargs:
                kwargs[name] = _as_tuple(name, kwargs[name])
        if "fault_schedule" in kwargs:
            spans = _as_tuple("fault_schedule", kwargs["fault_schedule"])
            kwargs["fault_schedule"] = tuple(_as_tuple("fault_schedule span", s) for s in spans)
        return cls(**kwargs)


def _as_tuple(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ValueError(f"{name} must be a list, got {type(value).__name__}")


def _check_models(models: Any) -> None:
    if not isinstance(models, tuple) or not models:
        raise ValueError("models must be a non-empty tuple of model names")
    for model in models:
        if not isinstance(model, str) or not model:
            raise ValueError(f"models must contain non-empty strings, got {model!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_number(name: str, value: Any, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_optional_positive_int(name: str, value: Any) -> None:
    if value is not None:
        _check_positive_int(name, value)


def _check_error_statuses(statuses: Any) -> None:
    if not isinstance(statuses, tuple) or not statuses:
        raise ValueError("error_statuses must be a non-empty tuple of HTTP statuses")
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
            raise ValueError(f"error_statuses must contain 5xx statuses, got {status!r}")


def _check_fault_schedule(schedule: Any) -> None:
    if not isinstance(schedule, tuple):
        raise ValueError("fault_schedule must be a tuple of (start, end, status) spans")
    last_end = -math.inf
    for span in sorted(schedule, key=lambda s: s[0] if isinstance(s, tuple) and s else 0):
        if not isinstance(span, tuple) or len(span) != 3:
            raise ValueError(f"fault_schedule spans must be (start, end, status), got {span!r}")
        start, end, status = span
        _check_number("fault_schedule start", start)
        _check_number("fault_schedule end", end)
        if end <= start:
            raise ValueError(f"fault_schedule span {span!r} must end after it starts")
        if start < last_end:
            raise ValueError("fault_schedule spans must not overlap")
        last_end = end
        if (
            isinstance(status, bool)
            or not isinstance(status, int)
            or not (status == 429 or 500 <= status <= 599)
        ):
            raise ValueError(f"fault_schedule statuses must be 429 or 5xx, got {status!r}")


def scheduled_fault(schedule: tuple[tuple[float, float, int], ...], elapsed: float) -> int | None:
    """The status a request arriving ``elapsed`` seconds after the start gets from the
    schedule, or ``None``."""
    for start, end, status in schedule:
        if start <= elapsed < end:
            return status
    return None
