"""Backends: the engines a plan's stages are mapped to.

This package's namespace holds the declaration helpers (``orla.backends.llamacpp(...)``)
and the call types every backend speaks (``ChatRequest``, ``ChatResult``, ``ToolCall``,
the ``Backend`` protocol). Its modules: ``declare``, ``base`` (the protocol), ``wire``
(the OpenAI chat-completions format), ``openai_client``, ``connect`` (a declaration to a
live connection), ``engine`` (the embedded llama.cpp server), ``control`` (requests to
engines' control endpoints), ``llamacpp_slots``, ``global_cache`` (vLLM/SGLang cache
resets) and ``sim/`` (the engine simulator).
"""

from orla_sdk.backends.base import (
    Backend,
    ChatRequest,
    ChatResult,
    ToolCall,
    params_token_limit,
    token_limit,
)
from orla_sdk.backends.declare import (
    DEFAULT_LOCAL_MODEL,
    llamacpp,
    ollama,
    openai_compatible,
    sglang,
    simulator,
    vllm,
)

__all__ = ["DEFAULT_LOCAL_MODEL", "Backend", "ChatRequest", "ChatResult", "ToolCall", "llamacpp",
           "ollama", "openai_compatible", "params_token_limit", "sglang", "simulator",
           "token_limit", "vllm"]
