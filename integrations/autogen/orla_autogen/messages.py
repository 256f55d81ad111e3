"""Translation between AutoGen's calls and orla's: AutoGen messages, tools and
``json_output`` as OpenAI chat messages and an orla ``ChatRequest``, and an engine's
``ChatResult`` as AutoGen's ``CreateResult``.

Tools pass through to the agent, who runs them. Where an engine cannot call tools
natively (llama.cpp with SmolLM2) they are emulated (``orla_autogen.emulation``): earlier
tool rounds are then written into the history as the emulation schema has them, their
results as user messages.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from autogen_core import FunctionCall
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    FinishReasons,
    LLMMessage,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from orla_sdk import OrlaError
from orla_sdk.backends import ChatRequest, ChatResult
from orla_sdk.ir import Target

Sink = Callable[[str | None], None]  # streamed text, then None when the call is over


@dataclass
class Call:
    """One ``create``: AutoGen's arguments, read and checked."""

    agent: str
    messages: Sequence[LLMMessage]
    tools: list[ToolSchema]
    tool_choice: str  # "auto", "required", "none", or the one tool's name
    schema: dict[str, Any] | None
    schema_name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def offered(self) -> list[ToolSchema]:
        if self.tool_choice == "none":
            return []
        if self.tool_choice in ("auto", "required"):
            return self.tools
        return [t for t in self.tools if t["name"] == self.tool_choice]

    @property
    def must_call(self) -> bool:
        return bool(self.offered) and self.tool_choice != "auto"


# ---- AutoGen's call as orla's request -----------------------------------------------------
def chat_request(call: Call, target: Target, priority: int | None, native: bool,
                 sink: Sink | None) -> ChatRequest:
    """The engine's request, its tools passed through (an emulated round's request is
    ``orla_autogen.emulation.emulated_request``); without ``native`` tool calling, earlier
    tool rounds are written as the emulation schema has them. It streams from the engine
    where the agent streams (``create_stream``), as it would bare."""
    params = call_params(call, target)
    if call.must_call:
        params["tool_choice"] = ("required" if call.tool_choice == "required" else
                                 {"type": "function", "function": {"name": call.tool_choice}})
    return ChatRequest(model=target.model, messages=chat_messages(call.messages, native),
                       params=params, json_schema=call.schema, schema_name=call.schema_name,
                       tools=[openai_tool(t) for t in call.offered], priority=priority,
                       on_token=sink, stream=sink is not None)


def call_params(call: Call, target: Target) -> dict[str, Any]:
    """The request's settings: the target's, then the agent's (its client's settings and
    the call's ``extra_create_args``)."""
    return {**target.params, **call.params}


def chat_messages(messages: Sequence[LLMMessage], native_tools: bool) -> list[dict[str, Any]]:
    """Chat-completions messages. Without native tools, tool calls are written as the JSON
    the emulation schema asks for, and their results as user messages."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        converted.extend(_message(message, native_tools))
    return converted


def _message(message: LLMMessage, native_tools: bool) -> list[dict[str, Any]]:
    if isinstance(message, SystemMessage):
        return [{"role": "system", "content": message.content}]
    if isinstance(message, UserMessage):
        return [{"role": "user", "content": _user_text(message)}]
    if isinstance(message, AssistantMessage):
        return [_assistant(message, native_tools)]
    if native_tools:
        return [{"role": "tool", "tool_call_id": r.call_id, "content": r.content}
                for r in message.content]
    return [{"role": "user", "content": "\n".join(f"Result of {r.name}: {r.content}"
                                                  for r in message.content)}]


def _user_text(message: UserMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    if any(not isinstance(part, str) for part in message.content):
        raise OrlaError(f"a message from {message.source!r} holds an image; the models orla "
                        "serves here read text only (the client's model_info says vision=False).")
    return "\n".join(cast(list[str], message.content))


def _assistant(message: AssistantMessage, native_tools: bool) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    if native_tools:
        return {"role": "assistant", "content": message.thought, "tool_calls": [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in message.content]}
    return {"role": "assistant", "content": "\n".join(
        json.dumps({"tool": c.name, "arguments": _json_or_text(c.arguments)})
        for c in message.content)}


def text_of(message: LLMMessage) -> str:
    """A message's text, for estimates (image parts count as nothing)."""
    if isinstance(message, (SystemMessage, UserMessage)):
        content = message.content
        return content if isinstance(content, str) else " ".join(
            part for part in content if isinstance(part, str))
    if isinstance(message, AssistantMessage):
        if isinstance(message.content, str):
            return message.content
        return " ".join(f"{c.name} {c.arguments}" for c in message.content)
    return " ".join(r.content for r in message.content)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


def tool_schema(tool: Tool | ToolSchema) -> ToolSchema:
    return tool.schema if isinstance(tool, Tool) else tool


def openai_tool(schema: ToolSchema) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": schema["name"], "description": schema.get("description", ""),
        "parameters": schema.get("parameters") or {"type": "object", "properties": {}}}}


def output_schema(json_output: bool | type[BaseModel] | None
                  ) -> tuple[dict[str, Any] | None, str]:
    """The JSON schema ``json_output`` asks for (if any) and its name."""
    if isinstance(json_output, type) and issubclass(json_output, BaseModel):
        return json_output.model_json_schema(), json_output.__name__
    if json_output:
        return {"type": "object"}, "output"
    return None, "output"


# ---- orla's result as AutoGen's -----------------------------------------------------------
def native_result(result: ChatResult) -> CreateResult:
    usage = RequestUsage(result.prompt_tokens, result.completion_tokens)
    if result.tool_calls:
        calls = [FunctionCall(id=c.id or call_id(), arguments=c.arguments, name=c.name)
                 for c in result.tool_calls]
        return CreateResult(finish_reason="function_calls", content=calls, usage=usage,
                            cached=False, thought=result.content or None)
    return CreateResult(finish_reason=finish_reason(result.finish_reason),
                        content=result.content, usage=usage, cached=False)


def finish_reason(reason: str) -> FinishReasons:
    known: dict[str, FinishReasons] = {
        "stop": "stop", "length": "length", "tool_calls": "function_calls",
        "function_call": "function_calls", "content_filter": "content_filter"}
    return known.get(reason, "stop" if not reason else "unknown")


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"
