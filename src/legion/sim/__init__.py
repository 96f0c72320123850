"""Provider simulator: an OpenAI- and Anthropic-compatible server on loopback
that rehearses a production LLM load (rate limits, latency, faults) without
paying for it."""

from legion.sim.config import SimConfig
from legion.sim.server import Simulator, serve_simulator

__all__ = ["SimConfig", "Simulator", "serve_simulator"]
