"""Model calls from inside a stage body: ``orla.generate`` / ``orla.chat`` and their async
twins.

The stage context says which backend and model serve the call (or which mapper picks
them), its priority and the run's cache slot. Structured output goes through the
engine's JSON-schema mode and is validated; a malformed answer is sent back with the
validation error a bounded number of times, then fails with an ``OutputError`` naming
the stage. A stage's tools run when the model calls them, for a bounded number of turns:
natively where the engine calls tools, otherwise through a JSON schema that lets the
model answer either with a tool call or with its final answer.

This module holds the public calls and the conversation loop around a stage's model
calls; ``routing`` picks the target, ``call`` makes and records each call, and
``structured`` holds the answer schemas and their parsing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from orla_sdk.backends.base import ChatRequest, ChatResult, ToolCall, params_token_limit
from orla_sdk.errors import OutputError
from orla_sdk.ir import Target
from orla_sdk.runtime.bodies import iterate_on_loop, wait_on_loop
from orla_sdk.runtime.call import call_model
from orla_sdk.runtime.context import StageContext, stage_context
from orla_sdk.runtime.routing import ready_target, stage_target
from orla_sdk.runtime.structured import (
    answer_schema,
    emulated_tools_schema,
    read_reply,
)

T = TypeVar("T")
SYNC_CALL_FIX = "use `await orla.achat(...)` or `await orla.agenerate(...)` inside it."



@overload
def generate(prompt: str, *, output: None = None, system: str | None = None,
             **options: Any) -> str: ...


@overload
def generate(prompt: str, *, output: type[T], system: str | None = None,
             **options: Any) -> T: ...


def generate(prompt: str, *, output: Any = None, system: str | None = None,
             **options: Any) -> Any:
    """Ask the stage's model; returns text, or a value of type ``output``.

    options: ``max_retries`` (malformed answers sent back, default 2), ``max_turns`` (tool
    rounds, default 4), ``tool_choice="required"`` (the first reply must call a tool),
    and inference parameters such as ``max_tokens`` or ``temperature``.
    """
    ctx = stage_context()
    return wait_on_loop(ctx, converse(ctx, _messages(prompt, system), output, **options),
                        fix=SYNC_CALL_FIX)


@overload
def chat(messages: list[dict[str, Any]], *, output: None = None, **options: Any) -> str: ...


@overload
def chat(messages: list[dict[str, Any]], *, output: type[T], **options: Any) -> T: ...


def chat(messages: list[dict[str, Any]], *, output: Any = None, **options: Any) -> Any:
    """``generate`` with a whole message list. For sync stage bodies."""
    ctx = stage_context()
    return wait_on_loop(ctx, converse(ctx, messages, output, **options), fix=SYNC_CALL_FIX)


@overload
async def agenerate(prompt: str, *, output: None = None, system: str | None = None,
                    **options: Any) -> str: ...


@overload
async def agenerate(prompt: str, *, output: type[T], system: str | None = None,
                    **options: Any) -> T: ...


async def agenerate(prompt: str, *, output: Any = None, system: str | None = None,
                    **options: Any) -> Any:
    return await converse(stage_context(), _messages(prompt, system), output, **options)


@overload
async def achat(messages: list[dict[str, Any]], *, output: None = None,
                **options: Any) -> str: ...


@overload
async def achat(messages: list[dict[str, Any]], *, output: type[T], **options: Any) -> T: ...


async def achat(messages: list[dict[str, Any]], *, output: Any = None, **options: Any) -> Any:
    return await converse(stage_context(), messages, output, **options)


def stream(prompt: str, *, system: str | None = None, **options: Any) -> Iterator[str]:
    """``generate`` for text, yielding the reply's pieces as the engine streams them. For
    sync stage bodies."""
    ctx = stage_context()
    messages = _messages(prompt, system)
    return iterate_on_loop(ctx, lambda put: converse(ctx, messages, None, on_token=put,
                                                     **options),
                           fix="use `orla.astream(...)` inside it.")


async def astream(prompt: str, *, system: str | None = None,
                  **options: Any) -> AsyncIterator[str]:
    """``stream`` for async stage bodies."""
    ctx = stage_context()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.ensure_future(converse(ctx, _messages(prompt, system), None,
                                          on_token=pieces.put_nowait, **options))
    try:
        while not (task.done() and pieces.empty()):
            getter = asyncio.ensure_future(pieces.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        task.result()
    finally:
        task.cancel()


async def converse(ctx: StageContext, messages: list[dict[str, Any]], output: Any,
                   max_retries: int = 2, max_turns: int = 4,
                   on_token: Callable[[str], None] | None = None, **params: Any) -> Any:
    """The tool loop and the validation loop around the stage's model calls. ``on_token``
    gets the reply's text as it streams (not a reasoning model's thinking)."""
    on_token = _text_only(on_token) if on_token is not None else None
    target = ready_target(ctx)
    if target is None:  # a routed stage's first call: its mapper picks the target
        target = await stage_target(ctx, messages)
    live = ctx.run.pool[target.backend]
    native = live.spec.capabilities.tool_calling
    history = list(messages)
    tool_first = params.pop("tool_choice", "auto") == "required"
    tool_turns = retries = 0
    conversation = next(ctx.conversations)
    while True:
        offer_tools = bool(ctx.tools) and tool_turns < max_turns
        emulate = bool(ctx.tools) and not native
        must_call = tool_first and offer_tools and tool_turns == 0
        request = _request(ctx, target, history, output, offer_tools, emulate,
                           {**params, "tool_choice": "required"} if must_call and not emulate
                           else params, answer_allowed=not must_call)
        result = await call_model(ctx, live, target, request, on_token)
        try:
            calls, answer = read_reply(result, output, offer_tools, emulate)
        except (ValueError, ValidationError) as exc:
            retries += 1
            if retries > max_retries:
                raise OutputError(f"stage {ctx.spec.name!r}: the model's answer is still not "
                                  f"valid after {max_retries} retries: {_short(exc)}") from exc
            history += [{"role": "assistant", "content": result.content},
                        {"role": "user", "content": f"That answer is not valid: {_short(exc)}"
                         ". Answer again, as JSON that matches the schema."}]
            continue
        if not calls:
            return answer
        history += await _tool_messages(ctx, result, calls, emulate,
                                        f"{ctx.key}/g{conversation}/t{tool_turns}")
        tool_turns += 1


def _text_only(on_token: Callable[[str], None]) -> Callable[[str], None]:
    def text(piece: str) -> None:
        if piece:
            on_token(piece)
    return text


def _request(ctx: StageContext, target: Target, history: list[dict[str, Any]], output: Any,
             offer_tools: bool, emulate: bool, params: dict[str, Any], *,
             answer_allowed: bool = True) -> ChatRequest:
    schema = answer_schema(output)
    tools: list[dict[str, Any]] = []
    if emulate:
        offered = ctx.spec.tools if offer_tools else []
        schema = emulated_tools_schema([(t.name, t.parameters) for t in offered], schema,
                                       answer_allowed, params_token_limit(params))
    elif offer_tools:
        tools = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in ctx.spec.tools]
    return ChatRequest(
        model=target.model, messages=history, params={**target.params, **params},
        json_schema=schema, schema_name=ctx.spec.name, tools=tools, priority=ctx.priority)


# ---- tools --------------------------------------------------------------------------
async def _tool_messages(ctx: StageContext, result: ChatResult, calls: list[ToolCall],
                         emulate: bool, turn_key: str) -> list[dict[str, Any]]:
    """Run the tool calls of one turn; ``turn_key`` names the turn for tools with effects."""
    outputs = []
    for index, call in enumerate(calls):
        outputs.append(await ctx.tool_runner.run(call, f"{turn_key}/c{index}/{call.name}"))
        ctx.run.emit("tool_call", ctx.node.id, stage=ctx.spec.name, item=ctx.record.item,
                     tool=call.name, arguments=call.arguments, result=outputs[-1])
    if not emulate:
        return [{"role": "assistant", "content": result.content or None, "tool_calls": [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls]},
            *[{"role": "tool", "tool_call_id": c.id, "content": out}
              for c, out in zip(calls, outputs, strict=True)]]
    return [{"role": "assistant", "content": result.content},
            *[{"role": "user", "content": f"Result of {c.name}: {out}"}
              for c, out in zip(calls, outputs, strict=True)]]


def _messages(prompt: str, system: str | None) -> list[dict[str, Any]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
