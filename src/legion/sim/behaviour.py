"""What the simulator answers: deterministic completions, token estimates,
and seeded decisions about faults and latency.

Completions depend only on the model and the messages, never on the seed or
on timing, so the same prompt always gets the same text, streamed or not.
Fault and latency decisions come from one `random.Random(seed)` consumed in
request arrival order, so a run with the same seed and the same sequence of
requests injects the same faults.
"""

from __future__ import annotations

import enum
import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import orjson

from legion.sim.config import SimConfig

FinishReason = Literal["stop", "length", "tool_calls"]

# Token estimate of OpenAI's chat format: each message costs a few tokens of
# framing, and the reply is primed with a few more.
_TOKENS_PER_MESSAGE = 3
_TOKENS_REPLY_PRIMING = 3
_CHARS_PER_TOKEN = 4
# Cost of a content part that is not text (an image, audio...): OpenAI's
# price of a low-detail image.
_NON_TEXT_PART_TOKENS = 85

# 128 words: one byte of a digest picks one (``byte & 127``).
_VOCABULARY = """
    able about above across after again air along always among answer
    around ask away back base before began being below better between big
    both bring build call came carry change city clear close cold come
    could country cover cross cut dark day deep does done door down draw
    during early earth east easy end enough even every fact fall far fast
    field find fire first follow form found free friend full game give
    good great green ground group grow half hand hard head hear heat help
    here high hold home hour idea inside island keep kind land large last
    late learn leave light line list little live long look made main make
    many mark measure might mind more move much name near need never next
    night north number
"""
_WORDS: tuple[str, ...] = tuple(_VOCABULARY.split())
_FIRST_WORDS: tuple[str, ...] = tuple(word.capitalize() for word in _WORDS)
_NEXT_WORDS: tuple[str, ...] = tuple(" " + word for word in _WORDS)


class Completion(NamedTuple):
    """A generated completion: its tokens (one word each, with its leading
    space) and why it ended."""

    tokens: tuple[str, ...]
    finish_reason: FinishReason
    tool_call: tuple[str, str] | None = None
    """The id and function name of the tool call it makes (its text: the arguments);
    see `legion.sim.tools`."""

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def estimate_prompt_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """Estimate the prompt tokens of chat ``messages``.

    One token per 4 characters of text content (rounded up per message),
    plus 3 tokens per message and 3 for the reply, as OpenAI's chat format
    costs; each non-text content part counts 85 tokens. Other fields (tool
    calls, tool definitions) are not counted. This is an estimate, not a
    tokenizer.
    """
    total = _TOKENS_REPLY_PRIMING
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += -(-len(content) // _CHARS_PER_TOKEN)
        elif isinstance(content, list):
            chars = 0
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    chars += len(text)
                else:
                    total += _NON_TEXT_PART_TOKENS
            total += -(-chars // _CHARS_PER_TOKEN)
    return total


def generate_completion(
    model: str,
    messages: Sequence[Mapping[str, object]],
    *,
    min_tokens: int,
    max_tokens: int,
    limit: int | None = None,
    stop: Sequence[str] = (),
) -> Completion:
    """The deterministic completion of ``messages`` by ``model``.

    A BLAKE2b digest of the model and the messages (serialised with sorted
    keys) picks a length between ``min_tokens`` and ``max_tokens`` and then
    one word per token, so the text is a reproducible pseudo-sentence ending
    with a period. ``limit`` (the request's ``max_tokens``) cuts it short with
    finish reason ``"length"``; the first ``stop`` string found ends it with
    ``"stop"``, the stop string excluded, as OpenAI does.
    """
    seed = model.encode() + b"\0" + orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.blake2b(seed, digest_size=64).digest()
    count = min_tokens + int.from_bytes(digest[:8], "little") % (max_tokens - min_tokens + 1)
    capped = limit is not None and limit < count
    wanted = limit if limit is not None and capped else count

    picks = bytearray()
    while len(picks) < wanted:
        digest = hashlib.blake2b(digest, digest_size=64).digest()
        picks += digest[: wanted - len(picks)]
    tokens = [_FIRST_WORDS[picks[0] & 127]]
    tokens.extend([_NEXT_WORDS[byte & 127] for byte in picks[1:]])
    if not capped:
        tokens[-1] += "."
    if stop:
        stopped = _apply_stop(tokens, stop)
        if stopped is not None:
            return Completion(stopped, "stop")
    return Completion(tuple(tokens), "length" if capped else "stop")


def _apply_stop(tokens: list[str], stop: Sequence[str]) -> tuple[str, ...] | None:
    """The tokens before the earliest stop string, the token it starts in
    cut short; ``None`` if no stop string occurs."""
    text = "".join(tokens)
    found = [index for index in (text.find(s) for s in stop if s) if index >= 0]
    if not found:
        return None
    end = min(found)
    kept: list[str] = []
    length = 0
    for token in tokens:
        if length + len(token) > end:
            if end > length:
                kept.append(token[: end - length])
            break
        kept.append(token)
        length += len(token)
    return tuple(kept)


class Fault(enum.Enum):
    """What goes wrong with a request, if anything."""

    NONE = "none"
    ERROR = "error"  # a 5xx answer
    HANG = "hang"  # no answer at all
    MALFORMED = "malformed"  # a 200 whose body is not valid JSON
    STALL = "stall"  # a stream that stops sending mid-way
    PING = "ping"  # a stream that sends only keep-alive comments


class Plan(NamedTuple):
    """How the simulator serves one admitted request."""

    fault: Fault
    error_status: int
    """The status of an `Fault.ERROR`; 0 otherwise."""
    latency: float
    """Seconds before the first byte of the answer (time to first token)."""


class FaultInjector:
    """Draws the fault and latency of each admitted request from a generator
    seeded with `SimConfig.seed`.

    Each request consumes one draw for its fault, then one for its latency
    when jitter is enabled. The fault draw ``u`` in [0, 1) falls in bands laid
    end to end: ``[0, error_rate)`` error, then hang, malformed, stall and ping,
    each as wide as its rate, so rates are exact fractions over many
    requests. Within the error band the position picks the status among
    `SimConfig.error_statuses` evenly.
    """

    __slots__ = (
        "_bands",
        "_error_rate",
        "_error_statuses",
        "_jitter",
        "_latency",
        "_lognormal",
        "_outage",
        "_planned",
        "_rng",
        "token_interval",
    )

    def __init__(self, config: SimConfig) -> None:
        self._rng = random.Random(config.seed)
        error_end = config.error_rate
        hang_end = error_end + config.hang_rate
        malformed_end = hang_end + config.malformed_rate
        stall_end = malformed_end + config.stall_rate
        ping_end = stall_end + config.ping_rate
        self._bands = (
            (error_end, Fault.ERROR),
            (hang_end, Fault.HANG),
            (malformed_end, Fault.MALFORMED),
            (stall_end, Fault.STALL),
            (ping_end, Fault.PING),
        )
        self._error_rate = config.error_rate
        self._outage = (config.outage_after, config.outage_after + config.outage_requests)
        self._planned = 0
        self._error_statuses = config.error_statuses
        self._latency = config.latency
        self._jitter = config.latency_jitter
        self._lognormal = config.latency_distribution == "lognormal"
        self.token_interval: float = (
            1.0 / config.tokens_per_second if config.tokens_per_second else 0.0
        )
        """Seconds between two completion tokens; 0 when generation is instant."""

    def plan(self, stream: bool) -> Plan:
        """Decide the fate of the next admitted request."""
        rng = self._rng
        draw = rng.random()
        fault = Fault.NONE
        for end, band_fault in self._bands:
            if draw < end:
                fault = band_fault
                break
        if fault in (Fault.STALL, Fault.PING) and not stream:
            fault = Fault.NONE
        status = 0
        if fault is Fault.ERROR:
            statuses = self._error_statuses
            status = statuses[min(int(draw / self._error_rate * len(statuses)), len(statuses) - 1)]
        self._planned += 1
        if self._outage[0] < self._planned <= self._outage[1]:
            fault, status = Fault.ERROR, 503
        latency = self._latency
        if self._jitter:
            if self._lognormal:
                latency += self._jitter * rng.lognormvariate(0.0, 1.0)
            else:
                latency += self._jitter * rng.random()
        return Plan(fault, status, latency)

    def generation_time(self, tokens: int) -> float:
        """Seconds to generate ``tokens`` completion tokens."""
        return tokens * self.token_interval
