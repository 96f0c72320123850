"""``@legion.agent``: an async function that becomes a durable, retryable unit of work.

An agent is ``async def f(ctx, *params) -> output``. The decorator reads its signature
once and builds what every task needs: how an input value maps to the parameters, a
pydantic model that validates it, and the options (timeout, retry policy, concurrency).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_origin, overload

from legion import codec
from legion.errors import ConfigError, InputError, OutputError
from legion.resources import encode, normalize
from legion.retry import RetryPolicy

if TYPE_CHECKING:
    # pydantic is imported where a model is built or an input validated, so that `import
    # legion` and the `legion` command start without it.
    from pydantic import BaseModel, TypeAdapter, ValidationError

AgentFn = Callable[..., Awaitable[Any]]

AGENT_NAME_MAX = 200
"""Characters of an agent's name, at most (the HTTP API names agents so)."""

# "async": an asyncio task in the worker; "process": a subprocess (hard isolation);
# "ray": a Ray cluster. The worker must be given the executors its agents ask for.
EXECUTORS = ("async", "process", "ray")


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """Options of one agent; see `agent` for their meaning."""

    name: str
    timeout: float | None
    retry: RetryPolicy
    concurrency: int | None
    executor: str
    deadline: float | None = None
    resources: tuple[tuple[str, float], ...] = ()  # what one instance needs (placement)
    max_cost: float | None = None  # USD all this agent's tasks may spend on LLM calls
    max_tokens: int | None = None  # prompt plus completion tokens, in all
    max_calls: int | None = None  # answered LLM calls, in all

    @property
    def budget(self) -> tuple[float | None, int | None, int | None] | None:
        """``(max_cost, max_tokens, max_calls)``, or ``None`` when the agent has no budget."""
        limits = (self.max_cost, self.max_tokens, self.max_calls)
        return None if limits == (None, None, None) else limits


class Agent:
    """A decorated agent function. Calling it calls the function itself."""

    def __init__(
        self,
        fn: AgentFn,
        options: AgentOptions,
        *,
        input_model: type[BaseModel] | None = None,
        output_model: Any = None,
    ) -> None:
        if inspect.isasyncgenfunction(fn):
            raise ConfigError(
                f"agent {options.name!r} is an async generator (it yields): an agent answers "
                "one result, so `return` it (stream pieces with ctx.llm.chat's stream, or a "
                "ctx.step for each)"
            )
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"agent {options.name!r} must be an `async def` function")
        self.fn = fn
        self.options = options
        # (read for every instance: attributes, not properties)
        self.name = options.name
        self.budget = options.budget
        self.params, self._validator = _parameters(fn, options.name, input_model)
        self._names = frozenset(self.params)
        self._one = len(self.params) == 1
        # Inputs that need no validation (see `_plain_types`): no pydantic model is built.
        self._plain = _plain_types(self._validator) if input_model is None else None
        self._output = _output_adapter(options.name, output_model)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def with_deadline(self, deadline: float | None) -> Agent:
        """This agent with another ``deadline`` (seconds per attempt, waits included)."""
        if deadline is not None and deadline <= 0:
            raise ConfigError("deadline must be > 0 seconds, or None")
        other = copy.copy(self)
        other.options = dataclasses.replace(self.options, deadline=deadline)
        return other

    @functools.cached_property
    def needs(self) -> str | None:
        """What one instance needs, as the store keeps it (None: nothing)."""
        return encode(dict(self.options.resources))

    @functools.cached_property
    def ref(self) -> str:
        """How another process imports this agent's function, in the form the loader reads:
        ``package.module:function``, or ``/path/to/script.py:function`` for a script run as
        ``__main__``. Executors that run agents in other processes send this.

        Raises `ConfigError` for a function that cannot be imported by name: one
        defined inside another function, a lambda, or one whose name now means something
        else in its module.
        """
        fn, name = self.fn, self.options.name
        where = f"{fn.__module__}.{fn.__qualname__}"
        if "<" in fn.__qualname__:  # <locals>, <lambda>
            raise ConfigError(
                f"agent {name!r} ({where}) cannot run in another process: it is not defined at "
                "the top level of a module, so it cannot be imported there; define it at "
                "module level"
            )
        module = sys.modules.get(fn.__module__)
        found: Any = module
        for part in fn.__qualname__.split("."):
            found = getattr(found, part, None)
        if not (found is self or found is fn or (isinstance(found, Agent) and found.fn is fn)):
            raise ConfigError(
                f"agent {name!r} cannot run in another process: importing {where} there would "
                "not find this agent's function"
            )
        if fn.__module__ != "__main__":
            return f"{fn.__module__}:{fn.__qualname__}"
        path = getattr(module, "__file__", None)
        if not path or not os.path.isfile(path):  # (python -, python -c: "<stdin>", none)
            raise ConfigError(
                f"agent {name!r} cannot run in another process: it was defined interactively; "
                "define it in a file"
            )
        return f"{os.path.abspath(path)}:{fn.__qualname__}"

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<legion.Agent {self.name} ({', '.join(self.params)})>"

    def arguments(self, value: Any) -> dict[str, Any]:
        """Map a submitted input to validated keyword arguments, or raise `InputError`.

        A JSON object whose keys are all parameter names is taken as the arguments; an
        agent with a single parameter also takes any other value as that parameter. An
        object that fits neither way is an error that names its unknown fields and the
        parameters it lacks.
        """
        plain = self._plain
        if isinstance(value, dict) and value.keys() <= self._names and (value or not self._one):
            if plain is not None and len(value) == len(plain) and _all_plain(value, plain):
                return value
            try:
                return self._validate(value)
            except InputError as exc:
                raise self._read_as_arguments(exc, value) from None
        if self._one:
            if plain is not None:
                want = plain[self.params[0]]
                if want is None or type(value) is want:
                    return {self.params[0]: value}
            from pydantic import ValidationError

            try:
                return self._validator.model_validate({self.params[0]: value}).__dict__
            except ValidationError as exc:
                if not (isinstance(value, dict) and self._as_arguments(value, exc)):
                    raise InputError(_validation_message(self.name, exc)) from None
        if isinstance(value, dict):
            unfit = self._unfit_fields(value)
            if not unfit.fields:  # `{}` for a single parameter that has a default
                return self._validate(value)
            raise unfit
        if value is None and not self.params:
            return {}
        if not self.params:
            raise InputError(
                f"agent {self.name!r} takes no parameters; got {type(value).__name__} "
                f"{_preview(value)} (give {{}} or null)"
            )
        raise InputError(
            f"agent {self.name!r} takes {', '.join(self.params)}; got {type(value).__name__} "
            f"{_preview(value)} (give a JSON object with those keys)"
        )

    def _read_as_arguments(self, exc: InputError, value: dict[str, Any]) -> InputError:
        """``exc``, the refusal of an object taken as the arguments of an agent with one
        parameter (its keys name it), saying so: it may have been meant as the value."""
        if not self._one:
            return exc
        (param,) = self.params
        from pydantic import ValidationError  # (pydantic loads at the first input read)

        try:  # (the hint only where the object could be its value: not for an `n: int`)
            self._validator.model_validate({param: value})
        except ValidationError:
            return exc
        return InputError(
            f"{exc} (an object whose keys name the agent's parameters is read as its "
            f"arguments: to give this one as the value of {param!r}, send "
            f'{{"{param}": ...}} around it)'
        )

    def _as_arguments(self, value: dict[str, Any], exc: ValidationError) -> bool:
        """Whether an object refused as the single parameter's value was meant as its
        arguments: it names the parameter, or the parameter takes no object at all."""
        (param,) = self.params
        return param in value or any(tuple(e["loc"]) == (param,) for e in exc.errors())

    def _unfit_fields(self, value: dict[str, Any]) -> InputError:
        """The error of an object that names fields the agent does not take, or lacks
        some it needs: the message names them all, and ``fields`` each one."""
        fields = self._validator.model_fields
        unknown = [str(k) for k in value if k not in self._names]
        more = len(unknown) - NAMED_AT_MOST
        if more > 0:  # (an input of 150,000 unknown fields answered 18 MB of errors)
            unknown = unknown[:NAMED_AT_MOST]
        missing = [p for p in self.params if p not in value and fields[p].is_required()]
        takes = ", ".join(self.params) or "no parameters"
        parts = []
        if unknown:
            named = ", ".join(unknown) + (f" and {more} more" if more > 0 else "")
            parts.append(f"unknown field(s) {named} (it takes {takes})")
        if missing:
            parts.append(f"missing field(s) {', '.join(missing)}")
        each = [
            ("extra_forbidden", k, f"unknown field {k} (agent {self.name!r} takes {takes})")
            for k in unknown
        ]
        each += [
            ("missing", p, f"missing field {p} (agent {self.name!r} needs it)") for p in missing
        ]
        return InputError(
            f"input does not fit agent {self.name!r}: " + "; ".join(parts), fields=tuple(each)
        )

    def _validate(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        from pydantic import ValidationError

        try:
            return self._validator.model_validate(kwargs).__dict__
        except ValidationError as exc:
            raise InputError(_validation_message(self.name, exc)) from None

    def check_json(self, value: Any, encoded: bytes) -> None:
        """Check a submitted input as JSON, strictly (``true`` is not a number, ``"5"`` not
        an integer), or raise `InputError`. ``encoded`` is ``value`` as JSON: the
        check reads it rather than copying the input again."""
        wrapped = False  # the input taken as the single parameter's value
        if isinstance(value, dict) and value.keys() <= self._names and (value or not self._one):
            kwargs = encoded
        elif self._one:
            kwargs = b"{" + codec.dumps(self.params[0]) + b":" + encoded + b"}"
            wrapped = True
        elif value is None and not self.params:
            kwargs = b"{}"
        else:
            self.arguments(value)  # raises, saying what the agent takes
            return
        from pydantic import ValidationError

        try:
            self._validator.model_validate_json(kwargs, strict=True)
        except ValidationError as exc:
            # As `arguments`: an object that fits neither as the value nor as the
            # arguments is refused for the fields it names or lacks (raised below, out of
            # this handler: pydantic's error is not its context).
            if not (wrapped and isinstance(value, dict) and self._as_arguments(value, exc)):
                refused = InputError(_validation_message(self.name, exc))
                if not wrapped and isinstance(value, dict):
                    refused = self._read_as_arguments(refused, value)
                raise refused from None
        else:
            return
        unfit = self._unfit_fields(value)
        if unfit.fields:
            raise unfit
        try:  # `{}` for a single parameter that has a default: its arguments, none given
            self._validator.model_validate_json(encoded, strict=True)
        except ValidationError as exc:
            raise InputError(_validation_message(self.name, exc)) from None

    def encode_input(self, value: Any) -> bytes:
        """``value`` as the JSON a task of this agent keeps: as it is, or where JSON has no
        type for some of it (a ``Decimal``, ``bytes`` of text) and the agent takes it, as
        its input model writes it (``Decimal("9.99")``: ``"9.99"``), which the agent reads
        back as the same value. Else `OutputError` says why it cannot be stored."""
        try:
            return codec.dumps(value)
        except OutputError as exc:
            refused = exc
        try:
            kwargs = self.arguments(value)
            written = self._validator.model_validate(kwargs).model_dump_json()
            return codec.dumps(codec.loads(written))
        except Exception:  # (not an input it takes, not even as JSON, a number past a
            raise refused from None  # float's range as its model writes it: the first reason)

    def input_schema(self, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
        """The JSON schema of what `arguments` accepts (``$defs`` under ``$defs``)."""
        model = self._validator.model_json_schema(ref_template=ref_template)
        defs = model.pop("$defs", {})
        if self._one:
            (param,) = self.params
            shape: dict[str, Any] = {"anyOf": [model["properties"][param], model]}
        else:
            shape = model
        return {**shape, "$defs": defs} if defs else shape

    def encode_output(self, value: Any) -> bytes:
        if self._output is not None:
            from pydantic import ValidationError

            try:
                value = self._output.validate_python(value)
            except ValidationError as exc:  # the agent's answer: not retried, as any output
                parts = [
                    f"{'.'.join(str(x) for x in err['loc']) or 'output'}: {err['msg']}"
                    for err in exc.errors(include_url=False)
                ]
                raise OutputError(
                    f"the output of agent {self.name!r} does not fit its output type: "
                    + "; ".join(parts)
                ) from None
        return codec.dumps(value)


NAMED_AT_MOST = 20
"""The unknown fields of an input an error names, at most (it says how many more)."""


@overload
def agent(fn: AgentFn, /) -> Agent: ...
@overload
def agent(
    *,
    name: str | None = None,
    timeout: float | None = 300.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    retry: RetryPolicy | None = None,
    concurrency: int | None = None,
    executor: str = "async",
    input: type[BaseModel] | None = None,
    output: Any = None,
    deadline: float | None = None,
    resources: Mapping[str, float] | Iterable[str] | None = None,
    max_cost: float | None = None,
    max_tokens: int | None = None,
    max_calls: int | None = None,
) -> Callable[[AgentFn], Agent]: ...


def agent(
    fn: AgentFn | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = 300.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    retry: RetryPolicy | None = None,
    concurrency: int | None = None,
    executor: str = "async",
    input: type[BaseModel] | None = None,
    output: Any = None,
    deadline: float | None = None,
    resources: Mapping[str, float] | Iterable[str] | None = None,
    max_cost: float | None = None,
    max_tokens: int | None = None,
    max_calls: int | None = None,
) -> Agent | Callable[[AgentFn], Agent]:
    """Make ``async def f(ctx, ...)`` an agent.

    - ``name``: how tasks refer to it (default: the function's name).
    - ``timeout``: seconds one attempt may run (``None``: no limit). Time spent waiting
      for capacity (a route's pace, a 429 pause, a free child process) does not count.
    - ``deadline``: seconds one attempt may last in all, waits for capacity included (a
      durable wait suspends the task: each resume has it anew) (``None``: no
      bound); a task that reaches it fails saying what it waited for.
    - ``retries``, ``backoff``, ``max_backoff``: tries after the first and the
      exponential backoff with full jitter between them (or pass a ``retry`` policy).
    - ``concurrency``: most instances of this agent running at once in one worker.
    - ``input``: a pydantic model for the single parameter (else its annotation is used).
    - ``output``: a type the result is validated against before it is stored.
    - ``resources``: what one instance needs, as ``{"memory_mb": 512}`` or tags
      (``["gpu"]``); only workers that offer it (``legion worker --offer``) lease its
      tasks, and the Ray executor asks Ray for it (see `legion.resources`).
    - ``max_cost`` (USD), ``max_tokens``, ``max_calls``: the agent's LLM budget, what all
      its tasks may spend in a worker (with `legion run`: in the run, earlier runs of it
      included). Each call reserves its share first; once the budget cannot hold a call,
      nothing more is sent for this agent, its unfinished tasks go back to the queue with
      what they recorded (no attempt spent) and the worker stops leasing them; a run or
      worker started with a higher limit resumes them.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"an agent's name must be a non-empty str, got {name!r}")
    if name is not None and (len(name) > AGENT_NAME_MAX or "\x00" in name):
        raise ConfigError(
            f"an agent's name is at most {AGENT_NAME_MAX} characters, without NUL (the HTTP "
            f"API names agents so): {name[:40]!r}{'...' * (len(name) > 40)} has {len(name)}"
        )
    _check_seconds("timeout", timeout)
    _check_seconds("deadline", deadline)
    _check_count("concurrency", concurrency)
    _check_count("retries", retries, least=0)
    if isinstance(retries, int) and retries > MAX_RETRIES:
        raise ConfigError(
            f"retries must be at most {MAX_RETRIES:,}, got {retries!r} (to keep trying for "
            "long, bound the time instead: deadline=, or a schedule)"
        )
    _check_seconds("backoff", backoff, zero=True)
    _check_seconds("max_backoff", max_backoff, zero=True)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigError(
            f"retry takes a legion.RetryPolicy, got {retry!r} (for a number of tries after "
            "the first, give retries=)"
        )
    if max_cost is not None and (
        not isinstance(max_cost, int | float)
        or isinstance(max_cost, bool)
        or not (math.isfinite(max_cost) and max_cost > 0)
    ):
        raise ConfigError(f"max_cost must be a positive number of USD, got {max_cost!r}")
    _check_count("max_tokens", max_tokens)
    _check_count("max_calls", max_calls)
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    policy = retry or RetryPolicy(retries=retries, backoff=backoff, max_backoff=max_backoff)
    try:
        needs = tuple(normalize(resources).items())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    def wrap(f: AgentFn) -> Agent:
        if isinstance(f, Agent):
            raise ConfigError(f"{f.name!r} is an agent already: decorate its function once")
        own_name = name or getattr(f, "__name__", None)
        if not own_name:
            raise ConfigError(f"{f!r} has no __name__: give the agent one with name=")
        options = AgentOptions(
            name=own_name,
            timeout=timeout,
            retry=policy,
            concurrency=concurrency,
            executor=executor,
            deadline=deadline,
            resources=needs,
            max_cost=max_cost,
            max_tokens=max_tokens,
            max_calls=max_calls,
        )
        return Agent(f, options, input_model=input, output_model=output)

    return wrap(fn) if fn is not None else wrap


def _check_seconds(label: str, value: object, *, zero: bool = False) -> None:
    """``value``: a finite number of seconds above 0 (``zero``: at least 0), or None."""
    if value is None:
        return
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    seconds = float(value) if numeric and isinstance(value, int | float) else math.nan
    if not (math.isfinite(seconds) and (seconds > 0 or (zero and seconds == 0))):
        bound = ">= 0," if zero else "> 0, or None;"
        raise ConfigError(f"{label} must be a finite number of seconds {bound} got {value!r}")


MAX_RETRIES = 1_000_000
"""The most ``retries`` an agent may give (a store keeps the attempts as a 32-bit integer)."""


def _check_count(label: str, value: object, least: int = 1) -> None:
    """``value``: a whole number of at least ``least``, or None."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"{label} must be a whole number >= {least}, got {value!r}")


def _parameters(
    fn: AgentFn, name: str, input_model: type[BaseModel] | None
) -> tuple[tuple[str, ...], type[BaseModel]]:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise ConfigError(f"agent {name!r} must take the context as its first parameter")
    if params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise ConfigError(
            f"agent {name!r}: its context, {params[0].name!r}, must be a plain first "
            "parameter (async def agent(ctx, ...)): the worker passes it by position"
        )
    if params[0].name in ("self", "cls"):  # (a bound method's signature has none)
        raise ConfigError(
            f"agent {name!r}: its first parameter is {params[0].name!r}, taken as the context: "
            "a method is an agent once bound (legion.agent(instance.method)), not decorated "
            "in its class"
        )
    if _an_input(params[0].annotation):
        raise ConfigError(
            f"agent {name!r}: its first parameter, {params[0].name!r}, is the context "
            f"(ctx: legion.Context), not an input of type {_type_name(params[0].annotation)}; "
            "the inputs come after it"
        )
    fields: dict[str, Any] = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ConfigError(
                f"agent {name!r}: parameter {p.name!r} must be a plain or keyword-only "
                "parameter (inputs are passed by name)"
            )
        annotation = _resolve(fn, name, p)
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (annotation, default)
    if input_model is not None:
        if len(fields) != 1:
            raise ConfigError(f"agent {name!r}: input= needs exactly one parameter after ctx")
        (only,) = fields
        fields[only] = (input_model, fields[only][1])
    from pydantic import ConfigDict, create_model

    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    try:
        model = create_model(f"{name}_input", __config__=config, **fields)
    except Exception as exc:
        raise ConfigError(f"agent {name!r}: cannot build its input schema: {exc}") from exc
    _check_model(fn, name, model, fields)
    return tuple(fields), model


def _output_adapter(name: str, output_model: Any) -> TypeAdapter[Any] | None:
    """What checks the agent's output (``output=``), or `ConfigError` for a type that
    pydantic cannot check."""
    if output_model is None:
        return None
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(output_model)
    except Exception as exc:
        first = str(exc).splitlines()[0].split(". ")[0]  # (not pydantic's own advice)
        raise ConfigError(
            f"agent {name!r}: output={_type_name(output_model)} is not a type its output can "
            f"be checked against ({first}): give a pydantic model, a dataclass or a "
            "type such as list[str]"
        ) from None


def _check_model(fn: AgentFn, name: str, model: type[BaseModel], fields: Mapping[str, Any]) -> None:
    """Refuse, where the agent is defined, an input model no input could ever fit: one
    whose types are not all known yet (a name in quotes within a type, ``list["Item"]``:
    looked up in the agent's module now, where pydantic would look in its own), one that
    took a parameter for something else (pydantic reads ``model_config`` as its
    settings), or one with a type JSON cannot carry (a plain class: every input was
    refused, and the HTTP API's schema failed for every agent)."""
    from pydantic import TypeAdapter
    from pydantic.errors import (
        PydanticInvalidForJsonSchema,
        PydanticUndefinedAnnotation,
        PydanticUserError,
    )

    if not model.__pydantic_complete__:
        try:
            model.model_rebuild(_types_namespace=dict(getattr(fn, "__globals__", {})))
        except (PydanticUserError, PydanticUndefinedAnnotation) as exc:
            first = exc.message.splitlines()[0]
            raise ConfigError(
                f"agent {name!r}: cannot resolve a type of its parameters ({first}); "
                "define that type at module level, before the agent"
            ) from None
    taken = [p for p in fields if p not in model.model_fields]
    if taken and taken[0].startswith("_"):  # (pydantic: a private attribute)
        raise ConfigError(
            f"agent {name!r}: parameter {taken[0]!r} starts with an underscore: inputs are "
            "passed by name, as the fields of a JSON object, and such a name cannot be "
            f"one; rename it (e.g. {taken[0].lstrip('_') or 'value'!r})"
        )
    if taken:  # (pydantic reads `model_config` as its settings)
        raise ConfigError(
            f"agent {name!r}: parameter {taken[0]!r} cannot be an input field (pydantic "
            f"reserves the name); rename it (e.g. {taken[0] + '_'!r})"
        )
    try:
        model.model_json_schema()
    except PydanticInvalidForJsonSchema:
        for p, field in model.model_fields.items():
            try:
                TypeAdapter(field.annotation or Any, config=_ANY_TYPE).json_schema()
            except PydanticInvalidForJsonSchema:
                raise ConfigError(
                    f"agent {name!r}: parameter {p!r} is of type {_type_name(field.annotation)}, "
                    "which no JSON input can be (inputs are stored as JSON): take what "
                    "it is made from, and make it in the agent"
                ) from None
        raise ConfigError(f"agent {name!r}: its inputs have no JSON schema") from None


_PLAIN_TYPES = (int, float, str, bool)
_ANY_TYPE: Any = {"arbitrary_types_allowed": True}


def _plain_types(model: type[BaseModel]) -> dict[str, type | None] | None:
    """Per parameter, the one type whose values validation hands back as they are
    (``None``: any value, a parameter typed ``Any`` or not at all); ``None`` when some
    parameter needs the model (another type, a constraint, a default to fill in).

    A JSON input decodes to exactly these types, so the common agent - ``(ctx, text:
    str, n: int)`` - gets its arguments without building a model for each task.
    """
    plain: dict[str, type | None] = {}
    for name, field in model.model_fields.items():
        if field.metadata or not field.is_required():
            return None
        annotation = field.annotation
        if annotation is Any:
            plain[name] = None
        elif isinstance(annotation, type) and annotation in _PLAIN_TYPES:
            plain[name] = annotation
        else:
            return None
    return plain


def _all_plain(value: dict[str, Any], plain: dict[str, type | None]) -> bool:
    for name, v in value.items():
        want = plain[name]
        if want is not None and type(v) is not want:
            return False
    return True


_INPUT_TYPES = (int, float, str, bool, bytes, list, dict, tuple, set)


def _an_input(annotation: Any) -> bool:
    """Whether a parameter annotated so is plainly an input, not the context (the
    annotation as written: a type, or its text under ``from __future__ import
    annotations``)."""
    if isinstance(annotation, str):
        return annotation.split("[", 1)[0].strip() in {t.__name__ for t in _INPUT_TYPES}
    from pydantic import BaseModel  # an agent's definition imports pydantic anyway

    origin = get_origin(annotation) or annotation
    return origin in _INPUT_TYPES or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(annotation))  # list[app.Item]: list[Item]


def _resolve(fn: AgentFn, agent_name: str, p: inspect.Parameter) -> Any:
    """The parameter's annotation as a type (string annotations are evaluated)."""
    if p.annotation is p.empty:
        return Any
    if not isinstance(p.annotation, str):
        return p.annotation
    try:
        return eval(p.annotation, getattr(fn, "__globals__", {}))
    except Exception as exc:
        raise ConfigError(
            f"agent {agent_name!r}: cannot resolve the annotation {p.annotation!r} of parameter "
            f"{p.name!r} ({exc}); define that type at module level, before the agent"
        ) from None


def _validation_message(agent_name: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "input"
        missing = err["type"] == "missing" and len(err["loc"]) == 1
        parts.append(f"{loc}: {err['msg']}" + (" (missing from the input)" if missing else ""))
    return f"input does not fit agent {agent_name!r}: " + "; ".join(parts)


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
