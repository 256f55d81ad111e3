"""Plain ``openai`` client code inside stage bodies, served through orla: on a scripted
backend for the shapes and the records, and on the real llama.cpp engine for the cache.
Assertions read the records, the requests the backend got and the engine's counters,
never wording."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

import orla_sdk as orla
from orla_sdk.backends.base import ChatRequest, ChatResult, ToolCall
from orla_sdk.backends.engine import LocalEngine
from orla_sdk.errors import BackendError
from orla_sdk.ir import BackendSpec, Capabilities

MODEL = orla.backends.DEFAULT_LOCAL_MODEL
PROBLEM = " ".join(f"Fact {i}: the warehouse ships parcels on weekday {i % 5}." for i in range(25))
TOOLS = [{"type": "function", "function": {
    "name": "lookup_order", "description": "Look up an order.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                   "required": ["order_id"]}}}]


def reply(content: str = "", *, calls: list[ToolCall] | None = None,
          cached: int = 0) -> ChatResult:
    return ChatResult(content=content, tool_calls=calls or [],
                      finish_reason="tool_calls" if calls else "stop", prompt_tokens=12,
                      completion_tokens=4, cached_tokens=cached, ttft_s=0.01, duration_s=0.02)


Script = ChatResult | Exception | tuple[str, Exception]  # the last: streams text, then fails


class Scripted:
    """A backend that answers from a script, streams word by word when asked, and keeps
    the requests it got."""

    def __init__(self, replies: list[Script]) -> None:
        self.spec = BackendSpec(name="scripted", kind="openai", url="http://127.0.0.1:9/v1",
                                capabilities=Capabilities(tool_calling=True))
        self.replies = list(replies)
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        script = self.replies.pop(0)
        text, error = script if isinstance(script, tuple) else ("", None)
        if isinstance(script, ChatResult):
            text = script.content
        if request.on_token is not None and text:
            for i, word in enumerate(text.split(" ")):
                request.on_token(word if i == 0 else f" {word}")
                await asyncio.sleep(0)
        if isinstance(script, Exception) or error is not None:
            raise error or script  # type: ignore[misc]
        assert isinstance(script, ChatResult)
        return script

    async def aclose(self) -> None:
        return None


def run_on(wf: Any, backend: Scripted, **inputs: Any) -> orla.RunResult:
    plan = orla.compile(wf, backends=[backend.spec],
                        mapping={"light": "scripted/small-model",
                                 "heavy": "scripted/big-model"})

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, clients={"scripted": backend}) as pool:
            return await orla.arun(plan, pool=pool, **inputs)

    return asyncio.run(go())


def backend_error(status: int | None, *, retryable: bool = False) -> BackendError:
    return BackendError("scripted", f"answered {status}" if status else "engine down",
                        retryable=retryable, status=status)


# ---- sync stage bodies ------------------------------------------------------------------
class Verdict(BaseModel):
    ok: bool


client = orla.openai_client()  # made outside any stage, as module-level agent code does


@orla.stage(model="light", priority=80)
def judge(text: str) -> Any:
    return client.chat.completions.create(
        model="gpt-4o",  # not a logical model of the plan: the stage's mapping decides
        messages=[{"role": "system", "content": "Judge."}, {"role": "user", "content": text}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "verdict", "schema": Verdict.model_json_schema()}},
        max_tokens=20, temperature=0.5, stop=["\n\n"])


@orla.workflow
def judging(text: str) -> Any:
    return judge(text)


def test_a_sync_body_calls_through_the_stage_and_is_recorded() -> None:
    backend = Scripted([reply('{"ok": true}', cached=7)])
    result = run_on(judging, backend, text="Is the sky blue?")
    assert result.ok, result.error
    completion = result.output
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert Verdict.model_validate_json(completion.choices[0].message.content or "").ok
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 12
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 7
    record = result.stage("judge")
    assert [(c.backend, c.model, c.cached_tokens) for c in record.calls] == [
        ("scripted", "small-model", 7)]
    request = backend.requests[0]
    assert request.model == "small-model" and request.priority == 80
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.messages[1]["content"] == "Is the sky blue?"
    assert request.json_schema == Verdict.model_json_schema()
    assert request.schema_name == "verdict"
    assert request.params["max_tokens"] == 20 and request.params["temperature"] == 0.5
    assert request.params["extra_body"] == {"stop": ["\n\n"]}  # reaches the engine as is


@orla.stage(model="light")
def pick_model(text: str) -> list[str]:
    models = []
    for name in ("heavy", "light", "no-such-model"):
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": text}])
        models.append(reply.model)
    return models


@orla.workflow
def picking(text: str) -> list[str]:
    return pick_model(text)


def test_a_request_naming_a_logical_model_is_served_by_its_mapping() -> None:
    backend = Scripted([reply("a"), reply("b"), reply("c")])
    result = run_on(picking, backend, text="hi")
    assert result.ok, result.error
    assert [r.model for r in backend.requests] == ["big-model", "small-model", "small-model"]
    assert [c.model for c in result.stage("pick_model").calls] == [
        "big-model", "small-model", "small-model"]
    assert result.output == ["heavy", "light", "no-such-model"]  # echoed, as asked


@orla.stage(model="light")
def sync_stream(text: str) -> list[Any]:
    stream = client.chat.completions.create(
        model="light", messages=[{"role": "user", "content": text}], stream=True,
        stream_options={"include_usage": True})
    return list(stream)


@orla.workflow
def sync_streaming(text: str) -> list[Any]:
    return sync_stream(text)


def test_a_sync_body_streams_chunks_and_usage() -> None:
    backend = Scripted([reply("one two three", cached=3)])
    result = run_on(sync_streaming, backend, text="count")
    assert result.ok, result.error
    chunks = result.output
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 3 and "".join(texts) == "one two three"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 3
    assert len(result.stage("sync_stream").calls) == 1


def lookup_order(order_id: str) -> str:
    return f"order {order_id}: shipped"


@orla.stage(model="light")
def tool_user(question: str) -> str:
    own = orla.wrap(openai.OpenAI(api_key="sk-test", base_url="https://api.example.com/v1"))
    messages: list[Any] = [{"role": "user", "content": question}]
    first = own.chat.completions.create(model="light", messages=messages, tools=TOOLS)
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        arguments = json.loads(call.function.arguments)
        messages.append({"role": "tool", "tool_call_id": call.id,
                         "content": lookup_order(**arguments)})
    second = own.chat.completions.create(model="light", messages=messages, tools=TOOLS)
    return second.choices[0].message.content or ""


@orla.workflow
def tool_flow(question: str) -> str:
    return tool_user(question)


def test_tool_calls_come_back_to_the_caller_of_a_wrapped_client() -> None:
    call = ToolCall(id="call_1", name="lookup_order", arguments='{"order_id": "7"}')
    backend = Scripted([reply(calls=[call]), reply("It shipped.")])
    result = run_on(tool_flow, backend, question="Where is order 7?")
    assert result.ok, result.error
    assert result.output == "It shipped."
    assert backend.requests[0].tools == TOOLS  # passed through, not the stage's tools
    sent = backend.requests[1].messages
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1",
                       "content": "order 7: shipped"}
    assert len(result.stage("tool_user").calls) == 2


@orla.stage(model="light")
def fragile(text: str) -> list[Any]:
    caught: list[Any] = []
    for _ in range(2):
        try:
            client.chat.completions.create(model="light",
                                           messages=[{"role": "user", "content": text}])
        except openai.APIStatusError as exc:
            caught.append((type(exc).__name__, exc.status_code, exc.message))
    return caught


@orla.workflow
def fragile_flow(text: str) -> list[Any]:
    return fragile(text)


def test_backend_errors_become_openai_status_errors() -> None:
    backend = Scripted([backend_error(None), backend_error(400)])
    result = run_on(fragile_flow, backend, text="hi")
    assert result.ok, result.error
    (down_kind, down_status, down_text), (bad_kind, bad_status, bad_text) = result.output
    assert (down_kind, down_status) == ("InternalServerError", 502)
    assert "backend 'scripted': engine down" in down_text
    assert (bad_kind, bad_status) == ("BadRequestError", 400)
    assert "backend 'scripted': answered 400" in bad_text


@orla.stage(model="light")
async def sync_client_in_async_body(text: str) -> str:
    reply = client.chat.completions.create(model="light",
                                           messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content or ""


@orla.workflow
def wrong_client(text: str) -> str:
    return sync_client_in_async_body(text)


def test_a_sync_client_in_an_async_body_says_which_to_use() -> None:
    result = run_on(wrong_client, Scripted([]), text="hi")
    assert not result.ok
    assert "is async: use orla.async_openai_client()" in (result.error or "")


# ---- async stage bodies -----------------------------------------------------------------
@orla.stage(model="light", priority=30)
async def async_stream(text: str) -> dict[str, Any]:
    aclient = orla.async_openai_client()
    plain = await aclient.chat.completions.create(
        model="light", messages=[{"role": "user", "content": text}], max_tokens=5)
    stream = await aclient.chat.completions.create(
        model="light", messages=[{"role": "user", "content": text}], stream=True,
        stream_options={"include_usage": True})
    return {"plain": plain, "chunks": [chunk async for chunk in stream]}


@orla.workflow
def async_streaming(text: str) -> dict[str, Any]:
    return async_stream(text)


def test_an_async_body_awaits_plain_and_streamed_calls() -> None:
    backend = Scripted([reply("first answer"), reply("alpha beta", cached=5)])
    result = run_on(async_streaming, backend, text="go")
    assert result.ok, result.error
    assert result.output["plain"].choices[0].message.content == "first answer"
    chunks = result.output["chunks"]
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["alpha", " beta"]
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 5
    assert [r.priority for r in backend.requests] == [30, 30]
    assert backend.requests[0].params == {"max_tokens": 5}
    assert [c.cached_tokens for c in result.stage("async_stream").calls] == [0, 5]


@orla.stage(model="light")
async def async_fragile(text: str) -> list[str]:
    own = orla.wrap(openai.AsyncOpenAI(api_key="sk-test"))
    caught = []
    try:
        await own.chat.completions.create(model="light", stream=True,
                                          messages=[{"role": "user", "content": text}])
    except openai.APIStatusError as exc:
        caught.append(f"{type(exc).__name__} {exc.status_code}")
    stream = await own.chat.completions.create(model="light", stream=True,
                                               messages=[{"role": "user", "content": text}])
    try:
        async for _ in stream:
            pass
    except openai.APIError as exc:  # the engine failed after the first token
        caught.append(f"{type(exc).__name__} {exc.message}")
    return caught


@orla.workflow
def async_fragile_flow(text: str) -> list[str]:
    return async_fragile(text)


def test_async_stream_errors_become_openai_errors() -> None:
    backend = Scripted([backend_error(None), ("partial answer", backend_error(None))])
    result = run_on(async_fragile_flow, backend, text="hi")
    assert result.ok, result.error
    assert result.output == ["InternalServerError 502",
                             "APIError backend 'scripted': engine down"]


@orla.stage(model="light")
def async_client_in_sync_body(text: str) -> str:
    async def ask() -> str:
        reply = await orla.async_openai_client().chat.completions.create(
            model="light", messages=[{"role": "user", "content": text}])
        return reply.choices[0].message.content or ""

    return asyncio.run(ask())  # agent code with an event loop of its own


@orla.workflow
def own_loop(text: str) -> str:
    return async_client_in_sync_body(text)


def test_an_async_client_on_a_loop_of_the_callers_own_is_handed_to_the_run() -> None:
    backend = Scripted([reply("done")])
    result = run_on(own_loop, backend, text="hi")
    assert result.ok, result.error
    assert result.output == "done"
    assert len(result.stage("async_client_in_sync_body").calls) == 1


# ---- outside a run ----------------------------------------------------------------------
def test_a_client_used_outside_a_stage_says_where_to_call_it() -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(orla.OrlaError, match=r"outside a stage run by orla\.run"):
        orla.openai_client().chat.completions.create(model="x", messages=messages)
    with pytest.raises(orla.OrlaError, match=r"@orla\.stage"):
        asyncio.run(orla.async_openai_client().chat.completions.create(
            model="x", messages=messages))
    with pytest.raises(TypeError, match=r"openai\.OpenAI"):
        orla.wrap("not a client")  # type: ignore[call-overload]


# ---- against the real engine ------------------------------------------------------------
@orla.stage(model="light")
def oa_first(problem: str) -> str:
    reply = orla.openai_client().chat.completions.create(
        model="light", max_tokens=8,
        messages=[{"role": "user", "content": f"{problem}\nStep 1: restate the problem."}])
    return reply.choices[0].message.content or ""


@orla.stage(model="light")
def oa_second(problem: str, previous: str) -> int:
    stream = orla.openai_client().chat.completions.create(
        model="light", max_tokens=8, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"{problem}\nStep 2: continue from: {previous}"}])
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    details = usage[-1].prompt_tokens_details
    return -1 if details is None else details.cached_tokens or 0


@orla.workflow
def oa_two_steps(problem: str) -> int:
    return oa_second(problem, oa_first(problem))


def test_openai_code_on_the_engine_reuses_the_preserved_prefix(
        llama_engine: LocalEngine) -> None:
    plan = orla.compile(oa_two_steps, backends=[orla.backends.llamacpp("local",
                                                                        url=llama_engine.url)],
                        mapping={"light": f"local/{MODEL}"})
    result = orla.run(plan, problem=PROBLEM)
    assert result.ok, result.error
    first, second = result.stage("oa_first"), result.stage("oa_second")
    assert first.backend == "local" and first.model == MODEL and len(first.calls) == 1
    assert first.cache_action.startswith("keep slot")
    assert second.calls[0].slot == first.calls[0].slot
    assert result.output == second.cached_tokens  # what the client saw is the engine's count
    assert second.cached_tokens > first.prompt_tokens // 2


# ---- a reasoning model's thinking streams as it comes ----------------------------------------
THINKING_STREAM = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Let me "}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "think."}}]},
    {"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
    {"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]},
]


def test_reasoning_streams_in_order_and_the_callers_text_stays_text() -> None:
    from orla_sdk.backends.wire import Chunks, StreamedReply

    pieces: list[str] = []
    reply = StreamedReply(on_token=pieces.append)
    for chunk in THINKING_STREAM:
        reply.add(chunk)
    chunks = Chunks.of({"model": "m", "stream": True})
    events = [chunks.piece(p) for p in pieces]
    events += chunks.end(reply.result(ttft_s=0.0, duration_s=0.0))
    deltas = [choice["delta"] for event in events if event.startswith(b"data: {")
              for choice in json.loads(event[6:])["choices"]]
    assert [d.get("reasoning_content") or d.get("content") for d in deltas if d] == [
        "Let me ", "think.", "Hi", "!"]  # the thinking first, as the engine sent it, once
    assert "content" not in deltas[0] and deltas[0]["role"] == "assistant"

    async def text_of_a_stage() -> list[str]:
        class Thinking:
            spec = BackendSpec(name="thinking", kind="openai", url="http://unused/v1",
                               capabilities=Capabilities())

            async def chat(self, request: ChatRequest) -> ChatResult:
                replay = StreamedReply(on_token=request.on_token)
                for chunk in THINKING_STREAM:
                    replay.add(chunk)
                return replay.result(ttft_s=0.0, duration_s=0.0)

            async def aclose(self) -> None:
                pass

        @orla.stage(model="light")
        async def greet() -> list[str]:
            return [piece async for piece in orla.astream("Say hi.")]

        @orla.workflow
        def hello() -> list[str]:
            return greet()

        plan = orla.compile(hello, backends=[Thinking.spec], mapping={"light": "thinking/m"})
        async with orla.BackendPool(plan.backends, clients={"thinking": Thinking()}) as pool:
            result = await orla.arun(plan, pool=pool)
        return list(result.raise_for_error().output)

    assert asyncio.run(text_of_a_stage()) == ["Hi", "!"]  # no empty piece for the thinking
