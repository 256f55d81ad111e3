"""The OpenAI chat-completions wire format, in both directions, in one place.

JSON bodies in and out of orla: a request body as a ``ChatRequest`` and back, a
``ChatResult`` as a completion (or as the server-sent chunks of a streamed one) and a
streamed reply read back into a ``ChatResult``, the usage, and the error envelope with
the status an error answers with. Pure format: no transport, nothing above
``orla_sdk.backends.base`` and ``orla_sdk.errors``. The engine client,
the simulator's HTTP server, the ``openai`` client shim and the proxy all speak it
through this module.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from orla_sdk.backends.base import ChatRequest, ChatResult, ToolCall
from orla_sdk.errors import BackendError

PARAMS = ("max_tokens", "max_completion_tokens", "seed", "temperature", "top_p", "tool_choice")


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """An OpenAI chat-completions body as a ``ChatRequest``."""
    if not isinstance(body.get("messages"), list):
        raise ValueError("'messages' must be a list of chat messages")
    schema, name = None, "output"
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema, name = spec.get("schema") or {"type": "object"}, spec.get("name", name)
    elif response_format.get("type") == "json_object":
        schema = {"type": "object"}
    return ChatRequest(model=str(body.get("model", "")), messages=body["messages"],
                       params={k: body[k] for k in PARAMS if k in body},
                       json_schema=schema, schema_name=name, tools=body.get("tools") or [],
                       slot=body.get("id_slot"), priority=body.get("priority"))


def message_json(result: ChatResult) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.content or None}
    if result.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function", "function": {
            "name": c.name, "arguments": c.arguments}} for c in result.tool_calls]
    return message


def usage_json(result: ChatResult) -> dict[str, Any]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens}}


def finish_reason(result: ChatResult) -> str:
    return result.finish_reason or ("tool_calls" if result.tool_calls else "stop")


def envelope(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """The fields every answer object of ``kind`` starts with (``chat.completion`` or
    ``chat.completion.chunk``), for an answer to ``body``."""
    return {"id": f"chatcmpl-orla-{uuid.uuid4().hex[:16]}", "object": kind,
            "created": int(time.time()), "model": str(body.get("model") or "orla")}


def completion_json(body: dict[str, Any], result: ChatResult) -> dict[str, Any]:
    """The ``chat.completion`` answering ``body`` with ``result``."""
    return {**envelope(body, "chat.completion"), "choices": [{
        "index": 0, "message": message_json(result), "finish_reason": finish_reason(result),
        "logprobs": None}], "usage": usage_json(result)}


def error_type(status: int) -> str:
    return "invalid_request_error" if status < 500 else "server_error"


def error_json(status: int, message: str, code: str | int | None = None) -> dict[str, Any]:
    """OpenAI's error envelope for an answer of ``status``."""
    return {"error": {"message": message, "type": error_type(status), "code": code}}


def error_status(exc: Exception) -> int:
    """The status an error answers with: the engine's own, 503 for a backend that may come
    back, 502 for one that failed otherwise, 400 for a request orla cannot read."""
    if not isinstance(exc, BackendError):
        return 400
    if exc.status is not None:
        return exc.status
    return 503 if exc.retryable else 502


def sse_data(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


@dataclass
class Chunks:
    """The server-sent events of one streamed answer."""

    envelope: dict[str, Any]
    include_usage: bool
    started: bool = False

    @classmethod
    def of(cls, body: dict[str, Any]) -> Chunks:
        options = body.get("stream_options") or {}
        return cls(envelope(body, "chat.completion.chunk"), bool(options.get("include_usage")))

    def piece(self, text: str) -> bytes:
        return self._delta({"content": text})

    def end(self, result: ChatResult) -> Iterator[bytes]:
        """The events after the streamed text: tool calls, the finish reason, the usage
        (when asked for) and ``[DONE]``."""
        if not self.started and (result.content or not result.tool_calls):
            yield self.piece(result.content)  # the backend did not stream it
        for index, call in enumerate(result.tool_calls):
            yield self._delta({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                               "function": {"name": call.name,
                                                            "arguments": call.arguments}}]})
        yield self._event([{"index": 0, "delta": {}, "finish_reason": finish_reason(result)}])
        if self.include_usage:
            yield self._event([], usage=usage_json(result))
        yield SSE_DONE

    def error(self, exc: Exception) -> bytes:
        """The event that ends a stream which failed after it began."""
        status = error_status(exc)
        return sse_data(error_json(status, str(exc), code=status))

    def _delta(self, delta: dict[str, Any]) -> bytes:
        if not self.started:
            delta = {"role": "assistant", **delta}
            self.started = True
        return self._event([{"index": 0, "delta": delta, "finish_reason": None}])

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_data({**self.envelope, "choices": choices, **extra})


# ---- orla as the client: a request body out, a streamed reply back ----------------------
def request_json(request: ChatRequest, *, stream: bool = True,
                 fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``request`` as a chat-completions body: streamed with a last usage chunk unless
    ``stream`` is False. ``fields`` (an engine's own) and then the ``extra_body`` of the
    request's parameters are merged in, those given in parameters winning."""
    params = dict(request.params)
    extra = params.pop("extra_body", {})
    streaming = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    body: dict[str, Any] = {"model": request.model, "messages": request.messages,
                            **streaming, **params}
    if request.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": request.schema_name, "schema": request.json_schema, "strict": True}}
    if request.tools:
        body["tools"] = request.tools
    return {**body, **(fields or {}), **extra}


class StreamedReply:
    """A streamed reply read back chunk by chunk: its text (each piece handed to
    ``on_token``), tool calls, finish reason and usage."""

    def __init__(self, on_token: Callable[[str], None] | None = None) -> None:
        self.on_token = on_token
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.finish = ""
        self.usage: dict[str, Any] = {}

    def add(self, chunk: dict[str, Any]) -> bool:
        """Read one chunk; whether it carried output (text or a tool call)."""
        self.usage = chunk.get("usage") or self.usage
        output = False
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content, tool_calls = delta.get("content"), delta.get("tool_calls")
            output = output or bool(content or tool_calls)
            if content:
                self.parts.append(content)
                if self.on_token is not None:
                    self.on_token(content)
            for call in tool_calls or []:
                _add_tool_delta(self.calls.setdefault(int(call.get("index", 0)), {}), call)
            self.finish = choice.get("finish_reason") or self.finish
        return output

    @property
    def delivered(self) -> bool:
        """Whether text has reached ``on_token``: a reply that fails after that must not be
        asked for again, or the caller would see its beginning twice."""
        return bool(self.parts) and self.on_token is not None

    def result(self, *, ttft_s: float, duration_s: float) -> ChatResult:
        details = self.usage.get("prompt_tokens_details") or {}
        return ChatResult(
            content="".join(self.parts),
            tool_calls=[ToolCall(id=c.get("id", ""), name=c.get("name", ""),
                                 arguments=c.get("arguments", ""))
                        for _, c in sorted(self.calls.items())],
            finish_reason=self.finish,
            prompt_tokens=self.usage.get("prompt_tokens") or 0,
            completion_tokens=self.usage.get("completion_tokens") or 0,
            cached_tokens=details.get("cached_tokens") or 0,
            ttft_s=ttft_s, duration_s=duration_s)


def _add_tool_delta(acc: dict[str, str], delta: dict[str, Any]) -> None:
    if delta.get("id"):
        acc["id"] = delta["id"]
    function = delta.get("function") or {}
    if function.get("name"):
        acc["name"] = acc.get("name", "") + function["name"]
    if function.get("arguments"):
        acc["arguments"] = acc.get("arguments", "") + function["arguments"]


def error_message(error: Any) -> str:
    """The message of an error envelope's ``error`` (or of whatever came instead)."""
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(error)[:500]
