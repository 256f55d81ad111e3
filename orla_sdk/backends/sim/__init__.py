"""The engine simulator: a peer of llama.cpp, vLLM and SGLang with the same HTTP surface
and counters, its costs modelled from public specifications (``docs/simulator.md``).
``orla_sdk.backends.sim.http.serve_http`` puts an engine behind HTTP."""

from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.profiles import SimProfile, get_profile

__all__ = ["SimEngine", "SimProfile", "VirtualClock", "get_profile"]
