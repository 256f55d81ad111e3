"""Model calls from inside a stage body: ``orla.generate`` / ``orla.chat`` and their async
twins.

The stage context says which backend and model serve the call (or which mapper picks
them), its priority and the run's cache slot. Structured output goes through the
engine's JSON-schema mode and is validated; a malformed answer is sent back with the
validation error a bounded number of times, then fails with an ``OutputError`` naming
the stage. A stage's tools run when the model calls them, for a bounded number of turns:
natively where the engine calls tools, otherwise through a JSON schema that lets the
model answer either with a tool call or with its final answer.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any, TypeVar, overload

from pydantic import TypeAdapter, ValidationError

from orla_sdk.backends.base import ChatRequest, ChatResult, ToolCall
from orla_sdk.errors import OrlaError, OutputError
from orla_sdk.ir import Target
from orla_sdk.mapping import StageMapper
from orla_sdk.runtime.context import StageContext, stage_context
from orla_sdk.runtime.pool import LiveBackend, in_thread
from orla_sdk.runtime.records import CallRecord

T = TypeVar("T")


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
    return chat(_messages(prompt, system), output=output, **options)


@overload
def chat(messages: list[dict[str, Any]], *, output: None = None, **options: Any) -> str: ...


@overload
def chat(messages: list[dict[str, Any]], *, output: type[T], **options: Any) -> T: ...


def chat(messages: list[dict[str, Any]], *, output: Any = None, **options: Any) -> Any:
    """``generate`` with a whole message list. For sync stage bodies (run in a thread)."""
    ctx = stage_context()
    if in_loop_thread(ctx):
        raise OrlaError(f"stage {ctx.spec.name!r} is async: use `await orla.achat(...)` or "
                        "`await orla.agenerate(...)` inside it.")
    future = asyncio.run_coroutine_threadsafe(converse(ctx, messages, output, **options),
                                              ctx.run.loop)
    return future.result()


@overload
async def agenerate(prompt: str, *, output: None = None, system: str | None = None,
                    **options: Any) -> str: ...


@overload
async def agenerate(prompt: str, *, output: type[T], system: str | None = None,
                    **options: Any) -> T: ...


async def agenerate(prompt: str, *, output: Any = None, system: str | None = None,
                    **options: Any) -> Any:
    return await achat(_messages(prompt, system), output=output, **options)


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
    if in_loop_thread(ctx):
        raise OrlaError(f"stage {ctx.spec.name!r} is async: use `orla.astream(...)` inside it.")
    pieces: queue.Queue[str] = queue.Queue()
    future = asyncio.run_coroutine_threadsafe(
        converse(ctx, _messages(prompt, system), None, on_token=pieces.put, **options),
        ctx.run.loop)
    while not (future.done() and pieces.empty()):
        try:
            yield pieces.get(timeout=0.05)
        except queue.Empty:
            continue
    future.result()  # raises what the call raised


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
    """The tool loop and the validation loop around the stage's model calls."""
    target = await stage_target(ctx, messages)
    live = ctx.run.pool[target.backend]
    native = live.spec.capabilities.tool_calling
    history = list(messages)
    tool_first = params.pop("tool_choice", "auto") == "required"
    tool_turns = retries = 0
    while True:
        offer_tools = bool(ctx.tools) and tool_turns < max_turns
        emulate = bool(ctx.tools) and not native
        must_call = tool_first and offer_tools and tool_turns == 0
        request = _request(ctx, target, history, output, offer_tools, emulate,
                           {**params, "tool_choice": "required"} if must_call and not emulate
                           else params, answer_allowed=not must_call)
        result = await call_model(ctx, live, target, request, on_token)
        try:
            calls, answer = _read(result, output, offer_tools, emulate)
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
        tool_turns += 1
        history += await _tool_messages(ctx, result, calls, emulate)


# ---- one model call -----------------------------------------------------------------
async def call_model(ctx: StageContext, live: LiveBackend, target: Target,
                     request: ChatRequest,
                     on_token: Callable[[str], None] | None = None) -> ChatResult:
    """Call the stage's backend through the pool (queue, slot, retries); record the call."""
    if ctx.run.before_call is not None:
        await ctx.run.before_call()
    sink = _token_sink(ctx, on_token or request.on_token)
    started_at = time.time()
    served = await ctx.run.pool.call(
        target.backend, replace(request, on_token=sink), run_id=ctx.run.run_id,
        stage=ctx.spec.name, priority=ctx.priority, critical_path=ctx.critical_path)
    result = served.result
    call = CallRecord(
        backend=target.backend, model=target.model, prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens, cached_tokens=result.cached_tokens,
        queue_wait_s=served.queue_wait_s, ttft_s=result.ttft_s, duration_s=result.duration_s,
        slot=served.slot, started_at=started_at)
    ctx.record.calls.append(call)
    ctx.run.emit("call", ctx.node.id, stage=ctx.spec.name, item=ctx.record.item, call=call)
    return result


def _token_sink(ctx: StageContext, user: Callable[[str], None] | None
                ) -> Callable[[str], None] | None:
    """Where streamed text goes: the caller's callback and the run's event listener."""
    emit = ctx.run.emit
    if user is None and not emit.active:
        return None

    def sink(text: str) -> None:
        if user is not None:
            user(text)
        emit("token", ctx.node.id, stage=ctx.spec.name, item=ctx.record.item, text=text)

    return sink


def _request(ctx: StageContext, target: Target, history: list[dict[str, Any]], output: Any,
             offer_tools: bool, emulate: bool, params: dict[str, Any], *,
             answer_allowed: bool = True) -> ChatRequest:
    schema = _answer_schema(output)
    tools: list[dict[str, Any]] = []
    if emulate:
        offered = ctx.spec.tools if offer_tools else []
        if "max_tokens" in params:  # a string cut off by max_tokens would break the JSON
            budget = int(params["max_tokens"])
            schema = schema or {"type": "string", "maxLength": 2 * budget}
            offered = [t.model_copy(update={"parameters": _bound_strings(
                t.parameters, max(8, budget // 2))}) for t in offered]
        schema = emulated_tools_schema([(t.name, t.parameters) for t in offered], schema,
                                       answer_allowed)
    elif offer_tools:
        tools = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in ctx.spec.tools]
    return ChatRequest(
        model=target.model, messages=history, params={**target.params, **params},
        json_schema=schema, schema_name=ctx.spec.name, tools=tools, priority=ctx.priority)


# ---- reading answers ----------------------------------------------------------------
def _read(result: ChatResult, output: Any, offer_tools: bool,
          emulate: bool) -> tuple[list[ToolCall], Any]:
    """Tool calls to run, or the final answer parsed into ``output``."""
    if offer_tools and not emulate and result.tool_calls:
        return result.tool_calls, None
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


def _answer_schema(output: Any) -> dict[str, Any] | None:
    if output is None or output is str:
        return None
    try:
        return copy.deepcopy(_schema(output))
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
                          answer_allowed: bool = True) -> dict[str, Any]:
    """The answer schema that emulates tool calling: ``{"tool": name, "arguments": {...}}``
    for one of ``tools`` (name, parameters schema), or ``{"answer": ...}`` (unless a tool
    call is required)."""
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


def _bound_strings(schema: Any, limit: int) -> Any:
    """``schema`` with every string that has no ``maxLength`` limited to ``limit``
    characters, so that a small model cannot ramble inside a tool argument."""
    if isinstance(schema, list):
        return [_bound_strings(s, limit) for s in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {k: _bound_strings(v, limit) for k, v in schema.items()}
    if schema.get("type") == "string" and "maxLength" not in schema and "enum" not in schema:
        bounded["maxLength"] = limit
    return bounded


# ---- tools --------------------------------------------------------------------------
async def _tool_messages(ctx: StageContext, result: ChatResult, calls: list[ToolCall],
                         emulate: bool) -> list[dict[str, Any]]:
    outputs = []
    for call in calls:
        outputs.append(await run_tool(ctx.tools, call, ctx.run.pool.tool_executor))
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


async def run_tool(tools: dict[str, Callable[..., Any]], call: ToolCall,
                   executor: Executor | None = None) -> str:
    """Run one tool call; every failure becomes a message the model can read."""
    fn = tools.get(call.name)
    if fn is None:
        return f"error: there is no tool named {call.name!r}; the tools are {sorted(tools)}"
    try:
        arguments = json.loads(call.arguments or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as exc:
        return f"error: the arguments of {call.name} are not a JSON object ({exc})"
    try:
        if asyncio.iscoroutinefunction(fn):
            value = await fn(**arguments)
        else:  # a plain function may block: keep it off the event loop
            value = await (in_thread(executor, fn, **arguments) if executor
                           else asyncio.to_thread(fn, **arguments))
    except Exception as exc:
        return f"error: {call.name} raised {type(exc).__name__}: {exc}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


# ---- routing ------------------------------------------------------------------------
async def stage_target(ctx: StageContext, messages: list[dict[str, Any]]) -> Target:
    """The stage's target; a routed stage asks its mapper once, on its first call."""
    spec = ctx.mapper()
    if spec is not None:
        mapper: StageMapper = ctx.run.plan.resolve(spec.ref).model_validate(spec.config)
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        ctx.routed_to = await mapper.choose(prompt, lambda name, text: _ask(ctx, name, text))
        ctx.record.routed_to = ctx.routed_to
    target = ctx.static_target()
    if target is None:
        raise OrlaError(f"stage {ctx.spec.name!r}: {ctx.routed_to or ctx.logical_model()!r} "
                        "is not mapped to a backend and model.")
    return _reroute(ctx, target)


def _reroute(ctx: StageContext, target: Target) -> Target:
    """The first alternative under its queue bound, when the target's queue is over its."""
    pool = ctx.run.pool
    if not ctx.spec.alternatives or not pool[target.backend].queue.over_bound():
        return target
    for name in ctx.spec.alternatives:
        alternative = ctx.run.plan.mapping.get(name)
        if isinstance(alternative, Target) and not pool[alternative.backend].queue.over_bound():
            ctx.record.rerouted_to = name
            return alternative
    return target


async def _ask(ctx: StageContext, name: str, text: str) -> str:
    target = ctx.run.plan.mapping.get(name)
    if not isinstance(target, Target):
        raise OrlaError(f"stage {ctx.spec.name!r}: the mapper asked {name!r}, which is not "
                        "mapped to a backend and model.")
    request = ChatRequest(model=target.model, messages=[{"role": "user", "content": text}],
                          params={**target.params, "max_tokens": 8}, priority=ctx.priority)
    result = await call_model(ctx, ctx.run.pool[target.backend], target, request)
    return result.content


def _messages(prompt: str, system: str | None) -> list[dict[str, Any]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]


def in_loop_thread(ctx: StageContext) -> bool:
    try:
        return asyncio.get_running_loop() is ctx.run.loop
    except RuntimeError:
        return False


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
