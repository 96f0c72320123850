"""`LocalProvider`: a GGUF model run in this process (see `legion.llm.local.provider`):
`model.py` loads it, `prompt.py` turns chat messages into its prompt and finds where
its answer ends, `provider.py` runs it on threads of its own."""

from legion.llm.local.model import (
    DEFAULT_CONTEXT,
    PACKAGED_MODEL,
    Model,
    ModelLoader,
    default_instances,
    default_threads,
    load_llama,
    packaged_model_path,
    require_extra,
)
from legion.llm.local.prompt import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_STOP,
    answer_text,
    build_prompt,
    completion_options,
)
from legion.llm.local.provider import LocalProvider, LocalStatistics

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_STOP",
    "PACKAGED_MODEL",
    "LocalProvider",
    "LocalStatistics",
    "Model",
    "ModelLoader",
    "answer_text",
    "build_prompt",
    "completion_options",
    "default_instances",
    "default_threads",
    "load_llama",
    "packaged_model_path",
    "require_extra",
]
