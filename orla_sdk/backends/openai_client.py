"""Any OpenAI-compatible engine, through the ``openai`` client, with each engine's own
request fields.

Every call streams, so the time to first token is measured where the caller sees it;
the last chunk carries the usage, including ``cached_tokens`` where the engine reports
them. Engine flavours add their own fields (``extra_body``):

- llama.cpp: ``id_slot`` pins the request to a slot, ``cache_prompt`` keeps its prefix;
- vLLM: ``priority``, where a lower value is served earlier;
- SGLang: ``priority``, where a higher value is served earlier (server started with
  ``--enable-priority-scheduling``);
- Ollama: ``keep_alive`` (how long the model stays loaded after the call), when the
  backend was declared with one;
- other servers: no extra fields.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai

from orla_sdk.backends.base import BackendError, ChatRequest, ChatResult, ToolCall
from orla_sdk.ir import BackendSpec


class OpenAICompatibleBackend:
    def __init__(self, spec: BackendSpec, *, api_key: str | None = None,
                 timeout: float = 120.0) -> None:
        if not spec.url:
            raise BackendError(spec.name, "has no url; declare it with url='http://host:port/v1'"
                               " (or start the embedded engine for llama.cpp backends).",
                               retryable=False)
        self.spec = spec
        self._client = openai.AsyncOpenAI(base_url=api_base(spec.url),
                                          api_key=api_key or "not-needed",
                                          timeout=timeout, max_retries=0)

    async def aclose(self) -> None:
        await self._client.close()

    async def chat(self, request: ChatRequest) -> ChatResult:
        try:
            try:
                return await self._chat_once(request)
            except openai.APITimeoutError:
                raise
            except openai.APIConnectionError:
                # A pooled keep-alive connection the server has closed fails once; a fresh
                # connection tells that apart from a real outage.
                return await self._chat_once(request)
        except openai.APITimeoutError as exc:
            raise BackendError(self.spec.name, f"timed out at {self.spec.url}: {exc}",
                               retryable=True) from exc
        except openai.APIConnectionError as exc:
            raise BackendError(self.spec.name, f"cannot reach {self.spec.url} ({exc}); is the "
                               "engine running?", retryable=True) from exc
        except openai.APIStatusError as exc:
            raise BackendError(self.spec.name, f"answered {exc.status_code}: {exc.message}",
                               retryable=exc.status_code >= 500) from exc

    async def _chat_once(self, request: ChatRequest) -> ChatResult:
        started = time.perf_counter()
        stream = await self._client.chat.completions.create(**self._arguments(request))
        return await _collect(stream, started, request.on_token)

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": request.model, "messages": request.messages, "stream": True,
            "stream_options": {"include_usage": True}, **request.params}
        if request.json_schema is not None:
            arguments["response_format"] = {"type": "json_schema", "json_schema": {
                "name": request.schema_name, "schema": request.json_schema, "strict": True}}
        if request.tools:
            arguments["tools"] = request.tools
        extra = {**engine_fields(self.spec.kind, request, self.spec.options),
                 **arguments.get("extra_body", {})}
        if extra:
            arguments["extra_body"] = extra  # fields given in params win
        return arguments


def api_base(url: str) -> str:
    """The ``/v1`` base the openai client expects, whichever form ``url`` was given in."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def engine_fields(kind: str, request: ChatRequest,
                  options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request fields that only this kind of engine understands."""
    fields: dict[str, Any] = {}
    if kind == "ollama" and options and "keep_alive" in options:
        fields["keep_alive"] = options["keep_alive"]
    if kind == "llamacpp" and request.slot is not None:
        fields.update(id_slot=request.slot, cache_prompt=True)
    if kind == "vllm" and request.priority is not None:
        fields["priority"] = 100 - request.priority
    if kind == "sglang" and request.priority is not None:
        fields["priority"] = request.priority
    return fields


async def _collect(stream: Any, started: float,
                   on_token: Callable[[str], None] | None = None) -> ChatResult:
    """Read a streamed reply: its text, tool calls, usage and timings."""
    parts: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    first: float | None = None
    finish = ""
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if first is None and (delta.content or delta.tool_calls):
                first = time.perf_counter() - started
            if delta.content:
                parts.append(delta.content)
                if on_token is not None:
                    on_token(delta.content)
            for call in delta.tool_calls or []:
                _add_tool_delta(calls.setdefault(call.index, {}), call)
            finish = choice.finish_reason or finish
    duration = time.perf_counter() - started
    details = getattr(usage, "prompt_tokens_details", None)
    return ChatResult(
        content="".join(parts),
        tool_calls=[ToolCall(id=c.get("id", ""), name=c.get("name", ""),
                             arguments=c.get("arguments", "")) for _, c in sorted(calls.items())],
        finish_reason=finish,
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        cached_tokens=getattr(details, "cached_tokens", 0) or 0,
        ttft_s=first if first is not None else duration,
        duration_s=duration)


def _add_tool_delta(acc: dict[str, str], delta: Any) -> None:
    if delta.id:
        acc["id"] = delta.id
    function = delta.function
    if function is not None:
        if function.name:
            acc["name"] = acc.get("name", "") + function.name
        if function.arguments:
            acc["arguments"] = acc.get("arguments", "") + function.arguments
