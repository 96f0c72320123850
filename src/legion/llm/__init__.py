"""legion's LLM layer: providers, shared adaptive capacity, retries, usage and cost.

::

    LLMClient.chat(messages, route)          client.py: routes, retries, usage, cost
        ├── Breaker.wait_turn()              breaker.py: waits out an outage, probes it
        ├── a hedged copy of a slow call     hedge.py: off unless a route sets it
        └── Capacity.reserve(tokens)         capacity.py: RPM / TPM / in-flight, AIMD
            └── Provider.chat(request)       provider.py: the interface
                ├── OpenAIProvider           openai.py: any OpenAI-compatible server
                ├── AnthropicProvider        anthropic.py: the Messages API
                ├── LocalProvider            local/: a GGUF model in process (llama.cpp)
                └── SimulatedProvider        simulated.py: the in-process simulator
                    └── HttpTransport        transport.py: aiohttp, timeouts, errors

Configuration (provider specs, ``legion.toml``) is in `legion.llm.config`; a client
from specs in one call (``await open_client("sim")``) in `legion.llm.specs`.
"""

from legion.llm.anthropic import AnthropicProvider
from legion.llm.breaker import Breaker, BreakerSettings, BreakerState, BreakerStatistics
from legion.llm.capacity import Capacity, CapacityStatistics, Slot
from legion.llm.client import LLMClient, LLMStatistics, Route, RouteStatistics, estimate_tokens
from legion.llm.config import (
    LLMConfig,
    RouteConfig,
    build_client,
    load_config,
    parse_config,
    parse_provider_spec,
)
from legion.llm.headers import parse_rate_limit_headers
from legion.llm.hedge import HedgeSettings
from legion.llm.local import LocalProvider, LocalStatistics
from legion.llm.openai import OpenAIProvider
from legion.llm.pricing import DEFAULT_PRICES, Price, PriceTable, cost
from legion.llm.provider import ChatResult, Provider
from legion.llm.simulated import SimulatedProvider
from legion.llm.specs import config_from_specs, open_client
from legion.llm.timer import AsyncioTimer, Timer
from legion.llm.types import ChatRequest, ChatResponse, Message, RateLimitInfo, ToolCall, Usage

__all__ = [
    "DEFAULT_PRICES",
    "AnthropicProvider",
    "AsyncioTimer",
    "Breaker",
    "BreakerSettings",
    "BreakerState",
    "BreakerStatistics",
    "Capacity",
    "CapacityStatistics",
    "ChatRequest",
    "ChatResponse",
    "ChatResult",
    "HedgeSettings",
    "LLMClient",
    "LLMConfig",
    "LLMStatistics",
    "LocalProvider",
    "LocalStatistics",
    "Message",
    "OpenAIProvider",
    "Price",
    "PriceTable",
    "Provider",
    "RateLimitInfo",
    "Route",
    "RouteConfig",
    "RouteStatistics",
    "SimulatedProvider",
    "Slot",
    "Timer",
    "ToolCall",
    "Usage",
    "build_client",
    "config_from_specs",
    "cost",
    "estimate_tokens",
    "load_config",
    "open_client",
    "parse_config",
    "parse_provider_spec",
    "parse_rate_limit_headers",
]
