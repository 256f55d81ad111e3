"""The OpenAI-compatible backend: against the real llama.cpp engine, and its wire format on
an engine answering from a script."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal, TypeVar

import httpx
import pytest
from pydantic import BaseModel

import orla_sdk as orla
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.engine import LocalEngine, free_port
from orla_sdk.backends.http1 import ProxiedPool
from orla_sdk.backends.openai_client import OpenAICompatibleBackend, api_base, engine_fields
from orla_sdk.errors import BackendError

MODEL = orla.backends.DEFAULT_LOCAL_MODEL
PREFIX = " ".join(f"Note {i}: the customer is always addressed by name." for i in range(30))
T = TypeVar("T")


class Triage(BaseModel):
    category: Literal["billing", "technical", "general"]
    urgent: bool


def run_with(url: str, use: Callable[[OpenAICompatibleBackend], Awaitable[T]],
             timeout: float = 120.0) -> T:
    async def go() -> T:
        backend = OpenAICompatibleBackend(orla.backends.llamacpp("local", url=url),
                                          timeout=timeout)
        try:
            return await use(backend)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def ask(text: str, **fields: object) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=[{"role": "user", "content": text}],
                       params={"max_tokens": 8}, **fields)  # type: ignore[arg-type]


def test_a_reply_carries_tokens_and_timings(llama_engine: LocalEngine) -> None:
    result = run_with(llama_engine.url, lambda b: b.chat(ask("Say hello.")))
    assert isinstance(result, ChatResult)
    assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 8
    assert 0 < result.ttft_s <= result.duration_s
    assert result.finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [True, False])
def test_cached_tokens_come_from_the_engine(llama_engine: LocalEngine, stream: bool) -> None:
    async def twice(backend: OpenAICompatibleBackend) -> tuple[ChatResult, ChatResult]:
        prefix = f"{'Streamed' if stream else 'Whole'} replies. {PREFIX}"  # cold either way
        first = await backend.chat(ask(prefix + " One?", slot=0, stream=stream))
        second = await backend.chat(ask(prefix + " Two?", slot=0, stream=stream))
        return first, second

    first, second = run_with(llama_engine.url, twice)
    assert second.cached_tokens >= first.prompt_tokens - 10
    assert second.cached_tokens > first.cached_tokens
    assert (second.ttft_s is not None) is stream and second.completion_tokens > 0


def test_json_schema_output_validates(llama_engine: LocalEngine) -> None:
    request = ChatRequest(
        model=MODEL, params={"max_tokens": 80, "temperature": 0},
        messages=[{"role": "user", "content": "Classify: my card was charged twice."}],
        json_schema=Triage.model_json_schema(), schema_name="Triage")
    result = run_with(llama_engine.url, lambda b: b.chat(request))
    triage = Triage.model_validate(json.loads(result.content))
    assert triage.category in ("billing", "technical", "general")


def test_an_engine_that_is_down_is_a_retryable_backend_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError, match="cannot reach") as info:
        run_with(url, lambda b: b.chat(ask("hi")))
    assert info.value.retryable and info.value.backend == "local"


def test_a_timeout_is_a_retryable_backend_error(llama_engine: LocalEngine) -> None:
    long = ask(PREFIX * 3 + " Write a long story.", slot=1)
    with pytest.raises(BackendError, match="timed out") as info:
        run_with(llama_engine.url, lambda b: b.chat(long), timeout=0.05)
    assert info.value.retryable


def test_a_backend_without_url_is_refused() -> None:
    with pytest.raises(BackendError, match="has no url"):
        OpenAICompatibleBackend(orla.backends.llamacpp("local"))


def test_engine_specific_fields() -> None:
    request = ask("x", slot=2, priority=90)
    assert engine_fields("llamacpp", request) == {"id_slot": 2, "cache_prompt": True}
    assert engine_fields("vllm", request) == {"priority": 10}
    assert engine_fields("sglang", request) == {"priority": 90}
    assert engine_fields("ollama", request) == {}
    ollama = orla.backends.ollama("laptop")
    assert engine_fields("ollama", request, ollama.options) == {"keep_alive": "10m"}
    assert api_base("http://h:1/") == "http://h:1/v1" and api_base("http://h:1/v1") == "http://h:1/v1"


# ---- the wire format, on an engine answering from a script -----------------------------
def scripted_engine(answer: Callable[[dict[str, Any]], httpx.Response]
                    ) -> tuple[OpenAICompatibleBackend, list[dict[str, Any]]]:
    """A backend whose HTTP goes to ``answer``; the request bodies are kept."""
    bodies: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return answer(bodies[-1])

    backend = OpenAICompatibleBackend(orla.backends.vllm("engine", "http://engine/v1"))
    backend._http = ProxiedPool("http://engine/v1", transport=httpx.MockTransport(handle))
    return backend, bodies


def sse(*events: dict[str, Any]) -> httpx.Response:
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def test_streamed_text_tool_calls_and_usage_are_read() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "c1", "function": {"name": "look", "arguments": '{"id"'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ': "7"}'}}]}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 5,
                                  "prompt_tokens_details": {"cached_tokens": 16}}}]
    backend, bodies = scripted_engine(lambda body: sse(*chunks))
    pieces: list[str] = []
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                          params={"max_tokens": 8, "extra_body": {"top_k": 5}}, priority=80,
                          on_token=pieces.append)
    result = asyncio.run(backend.chat(request))
    assert (result.content, pieces) == ("Hello", ["Hel", "lo"])
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [
        ("c1", "look", '{"id": "7"}')]
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens,
            result.cached_tokens) == ("tool_calls", 30, 5, 16)
    assert bodies[0]["top_k"] == 5 and bodies[0]["priority"] == 20  # vLLM: lower is sooner
    assert bodies[0]["stream"] is True and "extra_body" not in bodies[0]


def test_an_unstreamed_reply_reads_as_the_same_reply_streamed() -> None:
    extras = {"system_fingerprint": "fp-1", "timings": {"prompt_ms": 3.5}}
    usage = {"prompt_tokens": 30, "completion_tokens": 5,
             "prompt_tokens_details": {"cached_tokens": 16},
             "completion_tokens_details": {"reasoning_tokens": 2}}
    calls = [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}},
             {"id": "c2", "type": "function", "function": {"name": "find", "arguments": "[]"}}]
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1}]}
    completion = {**extras, "id": "x", "object": "chat.completion", "usage": usage,
                  "choices": [{"index": 0, "finish_reason": "tool_calls", "stop_reason": 7,
                               "logprobs": logprobs, "message": {
                                   "role": "assistant", "content": "Hi",
                                   "reasoning_content": "think", "tool_calls": calls}}]}
    chunks = [{**extras, "choices": [{"index": 0, "logprobs": logprobs, "delta": {
                  "role": "assistant", "content": "Hi", "reasoning_content": "think"}}]},
              *({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, **call}]}}]}
                for i, call in enumerate(calls)),
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls",
                            "stop_reason": 7}]},
              {"choices": [], "usage": usage}]
    unstreamed, bodies = scripted_engine(lambda body: httpx.Response(200, json=completion))
    streamed, _ = scripted_engine(lambda body: sse(*chunks))
    pieces: list[str] = []
    request = ask("hi", on_token=pieces.append, stream=False)
    result = asyncio.run(unstreamed.chat(request))
    assert "stream" not in bodies[0] and "stream_options" not in bodies[0]
    assert pieces == ["Hi"] and result.ttft_s is None and result.duration_s > 0
    as_streamed = asyncio.run(streamed.chat(ask("hi")))
    assert as_streamed.ttft_s is not None
    assert replace(result, ttft_s=0, duration_s=0) == replace(as_streamed, ttft_s=0,
                                                              duration_s=0)
    assert [c.id for c in result.tool_calls] == ["c1", "c2"] and result.cached_tokens == 16


def test_an_unstreamed_replys_tool_calls_keep_their_places_whatever_index_they_carry(
        ) -> None:
    calls = [{"index": 0, "id": "a", "type": "function",
              "function": {"name": "read", "arguments": '{"f": 1}'}},
             {"index": 0, "id": "b", "type": "function",
              "function": {"name": "write", "arguments": '{"f": 2}'}}]
    completion = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": calls}}]}
    backend, _ = scripted_engine(lambda body: httpx.Response(200, json=completion))
    result = asyncio.run(backend.chat(ask("hi", stream=False)))
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [
        ("a", "read", '{"f": 1}'), ("b", "write", '{"f": 2}')]


def test_an_error_answered_with_status_200_is_the_engines_error() -> None:
    envelope = {"error": {"message": "slot unavailable", "type": "server_error"}}
    backend, _ = scripted_engine(lambda body: httpx.Response(200, json=envelope))
    with pytest.raises(BackendError, match="slot unavailable") as info:
        asyncio.run(backend.chat(ask("hi", stream=False)))
    assert not info.value.retryable


@pytest.mark.parametrize("answer", [b"not json", b"[1, 2]", b'{"choices": []}',
                                    b'{"choices": [{"text": "legacy"}]}'])
def test_an_unstreamed_answer_that_is_not_a_completion_is_retryable(answer: bytes) -> None:
    backend, _ = scripted_engine(lambda body: httpx.Response(200, content=answer))
    with pytest.raises(BackendError, match="malformed completion") as info:
        asyncio.run(backend.chat(ask("hi", stream=False)))
    assert info.value.retryable


def test_an_engines_error_answer_is_a_backend_error_with_its_status() -> None:
    envelope = {"error": {"message": "context too long", "type": "invalid_request_error"}}
    for status, retryable in ((400, False), (503, True)):
        backend, _ = scripted_engine(lambda body, s=status: httpx.Response(s, json=envelope))
        with pytest.raises(BackendError, match="context too long") as info:
            asyncio.run(backend.chat(ask("hi")))
        assert (info.value.status, info.value.retryable) == (status, retryable)


def test_an_error_event_in_the_stream_is_a_backend_error() -> None:
    backend, _ = scripted_engine(lambda body: sse(
        {"choices": [{"index": 0, "delta": {"content": "par"}}]},
        {"error": {"message": "slot evicted"}}))
    with pytest.raises(BackendError, match="slot evicted"):
        asyncio.run(backend.chat(ask("hi")))
