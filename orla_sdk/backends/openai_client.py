"""Any OpenAI-compatible engine, over HTTP, with each engine's own request fields.

Every call streams, so the time to first token is measured where the caller sees it;
the last chunk carries the usage, including ``cached_tokens`` where the engine reports
them. The server-sent events are read as plain JSON with ``httpx``: the ``openai``
client would build a typed object per chunk, which doubled the cost of a short call on
a local engine. The bodies out and the chunks back are ``orla_sdk.backends.wire``'s.
Engine flavours add their own fields:

- llama.cpp: ``id_slot`` pins the request to a slot, ``cache_prompt`` keeps its prefix;
- vLLM: ``priority``, where a lower value is served earlier;
- SGLang: ``priority``, where a higher value is served earlier (server started with
  ``--enable-priority-scheduling``);
- Ollama: ``keep_alive`` (how long the model stays loaded after the call), when the
  backend was declared with one;
- other servers: no extra fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.wire import StreamedReply, error_message, request_json
from orla_sdk.errors import BackendError
from orla_sdk.ir import BackendSpec


class OpenAICompatibleBackend:
    def __init__(self, spec: BackendSpec, *, api_key: str | None = None,
                 timeout: float = 120.0) -> None:
        if not spec.url:
            raise BackendError(spec.name, "has no url; declare it with url='http://host:port/v1'"
                               " (or start the embedded engine for llama.cpp backends).",
                               retryable=False)
        self.spec = spec
        self._http = httpx.AsyncClient(
            base_url=api_base(spec.url), timeout=timeout,
            headers={"Authorization": f"Bearer {api_key or 'not-needed'}"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def chat(self, request: ChatRequest) -> ChatResult:
        try:
            try:
                return await self._chat_once(request)
            except httpx.TimeoutException:
                raise
            except httpx.TransportError:
                # A pooled keep-alive connection the server has closed fails once; a fresh
                # connection tells that apart from a real outage.
                return await self._chat_once(request)
        except httpx.TimeoutException as exc:
            raise BackendError(self.spec.name, f"timed out at {self.spec.url}: {exc!r}",
                               retryable=True) from exc
        except httpx.TransportError as exc:
            raise BackendError(self.spec.name, f"cannot reach {self.spec.url} ({exc!r}); is "
                               "the engine running?", retryable=True) from exc

    async def _chat_once(self, request: ChatRequest) -> ChatResult:
        started = time.perf_counter()
        async with self._http.stream("POST", "/chat/completions",
                                     json=self.body(request)) as response:
            if response.status_code >= 400:
                await response.aread()
                raise BackendError(
                    self.spec.name, f"answered {response.status_code}: {_message(response)}",
                    retryable=response.status_code >= 500, status=response.status_code)
            return await _collect(self._events(response), started, request.on_token)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completions request body; ``extra_body`` in the request's parameters
        (and the engine's own fields) are merged in, those given in parameters winning."""
        return request_json(request, fields=engine_fields(self.spec.kind, request,
                                                          self.spec.options))

    async def _events(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """The JSON of each server-sent event, up to ``[DONE]``. The body is read to its
        end even so: a connection whose response was left unread is closed, not pooled,
        and the next call would pay for a new one."""
        done = False
        async for line in response.aiter_lines():
            if done or not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if isinstance(event, dict) and "error" in event:  # a failure after streaming began
                raise BackendError(self.spec.name, f"failed while streaming: "
                                   f"{error_message(event['error'])}", retryable=False)
            yield event


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


async def _collect(events: AsyncIterator[dict[str, Any]], started: float,
                   on_token: Callable[[str], None] | None = None) -> ChatResult:
    """Read a streamed reply: its text, tool calls, usage and timings."""
    reply = StreamedReply(on_token)
    first: float | None = None
    async for chunk in events:
        if reply.add(chunk) and first is None:
            first = time.perf_counter() - started
    duration = time.perf_counter() - started
    return reply.result(ttft_s=first if first is not None else duration, duration_s=duration)


def _message(response: httpx.Response) -> str:
    """The error message of an engine's error answer (OpenAI's envelope, or the text)."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    return error_message(data.get("error", data)) if isinstance(data, dict) else str(data)[:500]
