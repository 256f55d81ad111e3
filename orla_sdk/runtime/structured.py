"""Structured output and emulated tools: the JSON schema an answer of type ``output``
must match, reading a reply into tool calls or a validated answer, closing JSON that
``max_tokens`` cut off, and the schema that lets an engine without tool calling answer
either with a tool call or with its final answer."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter

from orla_sdk.backends.base import ChatResult, ToolCall

CHARS_PER_ANSWER_TOKEN = 2  # a text answer under a token limit: characters per token
MIN_ARGUMENT_CHARS = 8  # the least a string argument is bounded to


def read_reply(result: ChatResult, output: Any, offer_tools: bool,
               emulate: bool) -> tuple[list[ToolCall], Any]:
    """Tool calls to run, or the final answer parsed into ``output``."""
    if offer_tools and not emulate and result.tool_calls:
        return result.tool_calls, None
    if result.tool_calls and not result.content.strip():
        raise ValueError("you called a tool, but no more tool calls are allowed; give your "
                         "final answer now")
    text = result.content
    if emulate:
        reply = json.loads(close_cut_json(text) if result.finish_reason == "length" else text)
        if not isinstance(reply, dict):
            raise ValueError("expected a JSON object with 'tool' or 'answer'")
        if "tool" in reply and offer_tools:
            return [ToolCall(id="emulated", name=str(reply["tool"]),
                             arguments=json.dumps(reply.get("arguments", {})))], None
        if "answer" not in reply:
            raise ValueError("expected a JSON object with 'tool' or 'answer'")
        answer = reply["answer"]
        text = answer if isinstance(answer, str) and output in (None, str) else json.dumps(answer)
    return [], _parse(text, output)


def close_cut_json(text: str) -> str:
    """JSON that ``max_tokens`` cut off, with its open string, arrays and objects closed,
    so that a cut answer reads as a shorter answer (as a cut text reply does)."""
    closers: list[str] = []
    in_string = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif in_string:
            escaped, in_string = char == "\\", char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
        elif char in "}]" and closers:
            closers.pop()
    closed = text[:-1] if escaped else text
    closed = closed + '"' if in_string else closed.rstrip().rstrip(",")
    return closed + "".join(reversed(closers))


def _parse(text: str, output: Any) -> Any:
    if output is None or output is str:
        return text
    try:
        adapter = _adapter(output)
    except TypeError:  # an unhashable type annotation: no cache
        adapter = TypeAdapter(output)
    return adapter.validate_json(text)


def answer_schema(output: Any) -> dict[str, Any] | None:
    """The JSON schema of an answer of type ``output``; None for text. It is shared by
    every call for that type: read it, never change it."""
    if output is None or output is str:
        return None
    try:
        return _schema(output)
    except TypeError:  # an unhashable type annotation: no cache
        schema: dict[str, Any] = TypeAdapter(output).json_schema()
        return schema


@functools.lru_cache(maxsize=256)
def _adapter(output: Any) -> TypeAdapter[Any]:
    return TypeAdapter(output)


@functools.lru_cache(maxsize=256)
def _schema(output: Any) -> dict[str, Any]:
    schema: dict[str, Any] = _adapter(output).json_schema()
    return schema


def emulated_tools_schema(tools: Sequence[tuple[str, dict[str, Any]]],
                          answer: dict[str, Any] | None,
                          answer_allowed: bool = True,
                          token_limit: int | None = None) -> dict[str, Any]:
    """The answer schema that emulates tool calling: ``{"tool": name, "arguments": {...}}``
    for one of ``tools`` (name, parameters schema), or ``{"answer": ...}`` (unless a tool
    call is required). Under a ``token_limit`` the strings are bounded, so that the JSON
    is not cut off by the limit: a text answer to ``CHARS_PER_ANSWER_TOKEN`` characters a
    token, each string argument to half the limit (at least ``MIN_ARGUMENT_CHARS``)."""
    if token_limit is not None:
        answer = answer or {"type": "string", "maxLength": CHARS_PER_ANSWER_TOKEN * token_limit}
        bound = max(MIN_ARGUMENT_CHARS, token_limit // 2)
        tools = [(name, bound_strings(parameters, bound)) for name, parameters in tools]
    answer = dict(answer or {"type": "string"})
    defs = answer.pop("$defs", {})
    choices = [{"type": "object", "required": ["tool", "arguments"], "properties": {
        "tool": {"const": name}, "arguments": parameters}} for name, parameters in tools]
    if answer_allowed or not choices:
        choices.append({"type": "object", "required": ["answer"],
                        "properties": {"answer": answer}})
    schema: dict[str, Any] = {"anyOf": choices}
    if defs:
        schema["$defs"] = defs
    return schema


def bound_strings(schema: Any, limit: int) -> Any:
    """``schema`` with every string that has no ``maxLength`` limited to ``limit``
    characters, so that a small model cannot ramble inside a tool argument."""
    if isinstance(schema, list):
        return [bound_strings(s, limit) for s in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {k: bound_strings(v, limit) for k, v in schema.items()}
    if schema.get("type") == "string" and "maxLength" not in schema and "enum" not in schema:
        bounded["maxLength"] = limit
    return bounded
