"""Declare backends for a plan, with each engine's capabilities filled in.

The validate pass checks stages against the capability flags: whether an engine can
call tools natively and constrain output to a JSON schema (tool calls can be emulated
through JSON-schema output, so a tool needs either). ``cache_control`` says which cache
action an engine offers (llama.cpp slots, a global prefix-cache reset, Ollama's
keep_alive, prompt-cache keys); the runtime's memory manager turns cache decisions into
those actions.

``concurrency`` is how many requests orla keeps in flight at an engine (its queue's
limit): a batching engine serves many at once and loses most of its throughput when
given few. llama.cpp's is its number of slots, read from the engine; vLLM's defaults to
its own default ``--max-num-seqs`` (256); SGLang's to what ``/get_server_info`` says
(``max_running_requests``); any other endpoint's to 8 unless told.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from orla_sdk.errors import OrlaError
from orla_sdk.ir import BackendSpec, Capabilities, Scheduling

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
VLLM_CONCURRENCY = 256  # vLLM's default --max-num-seqs


def checked_url(url: str, where: str = "url") -> str:
    """``url``, if it is one orla can call (``where`` names it in the error)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OrlaError(f"{where} {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8080/v1")
    return url


def _scheduling(concurrency: int | None) -> Scheduling:
    if concurrency is not None and concurrency < 1:
        raise OrlaError(f"concurrency must be at least 1, not {concurrency}")
    return Scheduling(limit=concurrency)


def llamacpp(name: str = "local", url: str | None = None,
             models: list[str] | None = None, *, tool_calling: bool = False) -> BackendSpec:
    """llama.cpp's server; with no url, orla starts the embedded engine itself. Its
    concurrency is its number of slots (``-np``), read from the engine.

    ``tool_calling=True`` when the served model's chat template emits native tool calls;
    otherwise (SmolLM2, the embedded default, does not) tool calls are emulated through
    JSON-schema output, which llama.cpp enforces with a grammar.
    """
    return BackendSpec(
        name=name, kind="llamacpp", url=None if url is None else checked_url(url),
        models=models or [DEFAULT_LOCAL_MODEL],
        capabilities=Capabilities(tool_calling=tool_calling, json_schema=True,
                                  cache_control="slots", metrics=True))


def vllm(name: str, url: str, models: list[str] | None = None, *,
         concurrency: int | None = None) -> BackendSpec:
    """vLLM's OpenAI server; give ``concurrency`` as its ``--max-num-seqs`` (None: vLLM's
    default, 256)."""
    limit = VLLM_CONCURRENCY if concurrency is None else concurrency
    return BackendSpec(
        name=name, kind="vllm", url=checked_url(url), models=models,
        scheduling=_scheduling(limit),
        capabilities=Capabilities(tool_calling=True, json_schema=True,
                                  cache_control="global_reset", metrics=True))


def sglang(name: str, url: str, models: list[str] | None = None, *,
           concurrency: int | None = None) -> BackendSpec:
    """SGLang's server; ``concurrency`` (None: the ``max_running_requests`` the server
    reports when orla connects)."""
    return BackendSpec(
        name=name, kind="sglang", url=checked_url(url), models=models,
        scheduling=_scheduling(concurrency),
        capabilities=Capabilities(tool_calling=True, json_schema=True,
                                  cache_control="global_reset", metrics=True))


def ollama(name: str, url: str = "http://127.0.0.1:11434/v1",
           models: list[str] | None = None, *, keep_alive: str | None = "10m") -> BackendSpec:
    """Ollama; ``keep_alive`` is sent with each call so the model stays loaded between a
    workflow's stages (None: Ollama's own default)."""
    return BackendSpec(
        name=name, kind="ollama", url=checked_url(url), models=models,
        options={"keep_alive": keep_alive} if keep_alive else {},
        capabilities=Capabilities(tool_calling=True, json_schema=True,
                                  cache_control="keep_alive", metrics=False))


def openai_compatible(name: str, url: str, models: list[str] | None = None, *,
                      tool_calling: bool = True, json_schema: bool = True,
                      concurrency: int | None = None) -> BackendSpec:
    """Any OpenAI-compatible endpoint; say what it supports and how many requests it
    serves at once (``concurrency``, 8 when not given): orla cannot ask it."""
    return BackendSpec(
        name=name, kind="openai", url=checked_url(url), models=models,
        scheduling=_scheduling(concurrency),
        capabilities=Capabilities(tool_calling=tool_calling, json_schema=json_schema,
                                  cache_control="prompt_key", metrics=False))


def simulator(name: str = "sim", profile: str = "qwen3-8b", *,
              clock: Literal["virtual", "real"] = "real", seed: int = 0,
              cache_control: Literal["slots", "global_reset"] | None = None) -> BackendSpec:
    """orla's parametric engine simulator, imitating ``profile``, run in process.

    ``clock="virtual"`` lets simulated time jump ahead whenever every task waits, so
    thousands of requests finish in seconds. The simulator imitates llama.cpp's slots for
    the SmolLM2 profile and a vLLM-style shared prefix cache for the others, unless
    ``cache_control`` says otherwise.
    """
    control = cache_control or ("slots" if profile.startswith("smollm2") else "global_reset")
    return BackendSpec(
        name=name, kind="sim", models=[profile], options={"clock": clock, "seed": seed},
        capabilities=Capabilities(tool_calling=True, json_schema=True, cache_control=control,
                                  metrics=True))
