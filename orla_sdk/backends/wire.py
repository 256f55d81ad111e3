"""The OpenAI chat-completions wire format, in both directions, in one place.

JSON bodies in and out of orla: a request body as a ``ChatRequest`` and back, a
``ChatResult`` as a reply message, its usage, and the error envelope. The engine client,
the simulator's HTTP server, the ``openai`` client shim and the proxy all speak it
through this module.
"""

from __future__ import annotations

from typing import Any

from orla_sdk.backends.base import ChatRequest, ChatResult

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
