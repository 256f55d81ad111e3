"""Backends: the engines a plan's stages are mapped to.

This package's namespace holds the declaration helpers (``orla.backends.llamacpp(...)``);
its modules are named apart from them: ``declare``, ``base`` (the protocol),
``openai_client``, ``engine`` (the embedded llama.cpp server), ``llamacpp_slots``, and
the simulator: ``sim_engine``, ``sim_profiles`` and ``sim_http``.
"""

from orla_sdk.backends.declare import (
    DEFAULT_LOCAL_MODEL,
    llamacpp,
    ollama,
    openai_compatible,
    sglang,
    simulator,
    vllm,
)

__all__ = ["DEFAULT_LOCAL_MODEL", "llamacpp", "ollama", "openai_compatible", "sglang",
           "simulator", "vllm"]
