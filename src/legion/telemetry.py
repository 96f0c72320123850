"""Tracing (OpenTelemetry) and structured logs.

Tracing is off by default and then costs nothing: the runner, ``ctx.step`` and the LLM
client check the module flag `tracing` and create no span. Turn it on with
`enable_tracing` (spans go to the tracer provider you configured, or the global
one), or let `configure_tracing` build a provider that exports them
(``legion serve --trace otlp``, or ``LEGION_TRACE=otlp``; ``console`` prints them).

Spans, nested as the work is:

- ``legion.task {agent}``, one per attempt: ``legion.task.id``, ``legion.task.attempt``,
  ``legion.agent``, ``legion.task.outcome`` (``succeeded``, ``retry``, ``failed``,
  ``dead``, ``cancelled``, ``released``, ``waiting``; ``lease_lost``), the attempt's
  ``legion.task.running_s`` and ``legion.task.waited_s`` (for capacity or a budget), and
  what its LLM calls used (``legion.task.llm_calls``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``legion.task.cost_usd``); an attempt that
  failed - raised, timed out, or returned what its agent cannot store - ends it with an
  error status and the error recorded as an ``exception`` event.
- ``legion.step``, one per step that runs (replayed steps run nothing, so make none):
  ``legion.step.key``, ``legion.task.id``; steps run by ``ctx.gather`` overlap in time.
- ``chat {model}``, one per LLM call (made in `legion.llm.tracing`), after the
  OpenTelemetry GenAI semantic conventions:
  ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
  ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
  ``gen_ai.response.finish_reasons`` and, on failure, ``error.type``; each try that
  failed (retried or not) is a ``legion.llm.try_failed`` event on it (``error.type``,
  ``error.message``, ``legion.llm.deployment``).

Structured logs: `configure_logging` with ``as_json=True`` writes one JSON object per
record, with the ``task_id``, ``agent`` and ``attempt`` that ``ctx.log`` (and the HTTP API)
attach, and the trace and span ids while tracing.

The OpenTelemetry packages are imported only when tracing is turned on (the ``otel`` extra
has the SDK and the OTLP exporter).
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import json
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from legion import codec
from legion.errors import ConfigError
from legion.extras import install_hint
from legion.task import Outcome

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from legion.task import Completion, Lease

T = TypeVar("T")

log = logging.getLogger("legion.telemetry")

EXPORTERS = ("otlp", "console")

tracing = False
"""Whether spans are made; read by the core before it makes any."""

_tracer: Tracer | None = None

# Attributes of a log record that every record has; the rest were attached by the caller
# (uvicorn's color_message repeats the message with terminal colours: left out).
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def enable_tracing(provider: TracerProvider | None = None) -> None:
    """Make spans from now on, with ``provider`` (default: OpenTelemetry's global one)."""
    global tracing, _tracer
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigError(f"tracing needs OpenTelemetry ({exc}): {install_hint('otel')}") from exc
    _tracer = trace.get_tracer("legion", tracer_provider=provider)
    tracing = True


def disable_tracing() -> None:
    """Make no more spans."""
    global tracing, _tracer
    tracing = False
    _tracer = None


def configure_tracing(exporter: str, *, service_name: str = "legion") -> Callable[[], None]:
    """Export spans with ``exporter`` and turn tracing on; answer the function that flushes
    and stops the export (call it at exit).

    ``otlp`` sends OTLP over HTTP, configured by the standard ``OTEL_EXPORTER_OTLP_*``
    variables (default ``http://localhost:4318``); ``console`` prints spans to stderr.
    The service is ``service_name`` unless ``OTEL_SERVICE_NAME`` (or ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``) names it.
    The provider also becomes OpenTelemetry's global one, so spans of agent code nest in
    legion's.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown trace exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        span_exporter: SpanExporter
        if exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter()
        else:
            span_exporter = ConsoleSpanExporter(out=sys.stderr)
    except ImportError as exc:
        raise ConfigError(
            f"exporting traces needs the OpenTelemetry SDK ({exc}): {install_hint('otel')}"
        ) from exc
    # (shut down here, within a bound: its own hook at exit waits on the collector)
    provider = TracerProvider(
        resource=Resource.create(resource_attributes(service_name)), shutdown_on_exit=False
    )
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    enable_tracing(provider)

    def shutdown() -> None:
        disable_tracing()
        # The last spans go to the collector in a thread of their own, waited for
        # `FLUSH_AT_EXIT` seconds: a collector down or hung took every command ~30 s
        # more to exit (10 s an export, for each batch left), past a pod's grace period.
        closing = threading.Thread(target=provider.shutdown, name="legion-trace-flush")
        closing.daemon = True
        closing.start()
        closing.join(FLUSH_AT_EXIT)
        if closing.is_alive():
            log.warning(
                "the trace collector took no spans for %g s at exit: the spans it had not "
                "taken are dropped",
                FLUSH_AT_EXIT,
            )

    return shutdown


FLUSH_AT_EXIT = 5.0
"""Seconds a command waits at exit for the trace collector to take the last spans."""


def resource_attributes(service_name: str) -> dict[str, str]:
    """The attributes legion gives its spans' resource: ``service_name``, unless the
    standard variables name the service (``OTEL_SERVICE_NAME``, or ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``), which OpenTelemetry then reads."""
    listed = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    named = os.environ.get("OTEL_SERVICE_NAME") or any(
        item.partition("=")[0].strip() == "service.name" for item in listed.split(",")
    )
    return {} if named else {"service.name": service_name}


def add_event(name: str, attributes: dict[str, str | int | float]) -> None:
    """An event on the current span (while tracing)."""
    from opentelemetry import trace

    trace.get_current_span().add_event(name, attributes)


def active_tracer() -> Tracer:
    if _tracer is None:
        raise ConfigError("tracing is off: call legion.telemetry.enable_tracing() first")
    return _tracer


def start_task(lease: Lease, agent: str) -> Span:
    """The span of one attempt, begun: `within` makes it current while the agent runs,
    `end_task` ends it with how the attempt ended."""
    attributes: dict[str, str | int] = {
        "legion.agent": agent,
        "legion.task.id": lease.id,
        "legion.task.attempt": lease.attempt,
    }
    return active_tracer().start_span(f"legion.task {agent}", attributes=attributes)


async def within(span: Span, call: Awaitable[T]) -> T:
    """Await ``call`` with ``span`` current (its steps and calls nest in it); how the
    attempt ended is `end_task`'s to say, not an exception's on the way out."""
    from opentelemetry.trace import use_span

    with use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        return await call


_FAILED = frozenset({Outcome.FAILED, Outcome.DEAD, Outcome.RETRY})


def end_task(span: Span, done: Completion | None, abandoned: bool = False) -> None:
    """End an attempt's span with its outcome: an error status and the error recorded for
    a failed attempt - one that raised, timed out, or returned what its agent cannot
    store - and the error recorded for one given back because of it (a spent budget, a
    provider's long Retry-After). ``done`` is ``None`` when the attempt wrote no end: its
    lease was lost, or it was ``abandoned`` (it ran on after it was stopped). Never
    raises: a span is not worth its instance."""
    try:
        _describe(span, done, abandoned)
    except Exception:
        log.exception("the span of an attempt could not be completed")
    finally:
        span.end()


def _describe(span: Span, done: Completion | None, abandoned: bool) -> None:
    from opentelemetry.trace import Status, StatusCode

    if done is None:
        span.set_attribute("legion.task.outcome", "abandoned" if abandoned else "lease_lost")
        if abandoned:
            span.set_status(Status(StatusCode.ERROR, "it ran on after it was stopped"))
        return
    span.set_attribute("legion.task.outcome", done.outcome.value)
    span.set_attribute("legion.task.running_s", done.running)
    span.set_attribute("legion.task.waited_s", done.waited)  # (for capacity, a budget)
    if done.usage:
        used = codec.loads(done.usage)
        span.set_attribute("legion.task.llm_calls", int(used.get("llm_calls", 0)))
        span.set_attribute("gen_ai.usage.input_tokens", int(used.get("prompt_tokens", 0)))
        span.set_attribute("gen_ai.usage.output_tokens", int(used.get("completion_tokens", 0)))
        span.set_attribute("legion.task.cost_usd", float(used.get("cost_usd", 0.0)))
    if done.error is not None:
        span.add_event(
            "exception",
            {
                "exception.type": done.error.type,
                "exception.message": done.error.message,
                "exception.stacktrace": done.error.traceback,
            },
        )
        if done.outcome in _FAILED:
            why = f"{done.error.type}: {done.error.message}"
            span.set_status(Status(StatusCode.ERROR, why))


async def traced_step(
    lease: Lease, key: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """Run one step's function (awaiting what it returns, if awaitable) inside its span."""
    attributes: dict[str, str | int] = {"legion.step.key": key, "legion.task.id": lease.id}
    with active_tracer().start_as_current_span("legion.step", attributes=attributes) as span:
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            # (not an Exception: OpenTelemetry records none) its attempt was stopped
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, "cancelled"))
            raise
        return result


# -- structured logs -------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the fields the caller
    attached (``task_id``, ``agent``, ``attempt``...), trace ids while tracing, and the
    formatted exception if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if tracing:
            entry.update(_trace_ids())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _trace_ids() -> dict[str, str]:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def configure_logging(*, level: int = logging.INFO, as_json: bool = False) -> None:
    """Log to stderr at ``level``: one JSON object per line with ``as_json``, else text."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
