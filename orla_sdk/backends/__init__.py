"""Backends: the engines a plan's stages are mapped to."""

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
