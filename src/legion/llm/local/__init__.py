"""`LocalProvider`: a GGUF model run in this process (see `legion.llm.local.provider`)."""

from legion.llm.local.provider import (
    DEFAULT_CONTEXT,
    DEFAULT_MAX_TOKENS,
    DEFAULT_STOP,
    PACKAGED_MODEL,
    LocalProvider,
    LocalStatistics,
    Model,
    ModelLoader,
    answer_text,
    build_prompt,
    completion_options,
    default_instances,
    default_threads,
    load_llama,
    packaged_model_path,
    require_extra,
)

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
