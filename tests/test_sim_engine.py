"""The simulated engine: its cost model, prefix cache, queue, clocks and HTTP surface."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

import orla_sdk as orla
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.http1 import ConnectionPool
from orla_sdk.backends.llamacpp_slots import LlamaCppControl
from orla_sdk.backends.openai_client import OpenAICompatibleBackend
from orla_sdk.backends.sim.cache import BLOCK_SEPARATOR
from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.http import serve_http
from orla_sdk.backends.sim.profiles import PROFILES, SimProfile, get_profile
from orla_sdk.backends.sim.replies import fake_json, filler_tokens, reply_seed, stable_seed
from orla_sdk.backends.sim.tokens import message_text, render_prompt, rendered, tokenize
from orla_sdk.backends.wire import chat_request
from orla_sdk.errors import BackendError

T = TypeVar("T")
SYSTEM = " ".join(f"Rule {i}: answer the customer politely and briefly." for i in range(30))
# round numbers, so expected times can be written down
TOY = SimProfile(name="toy", machine="none", prefill_base_s=0.01, prefill_per_token_s=0.001,
                 decode_base_s=0.02, decode_per_seq_s=0.005, decode_per_kv_token_s=0.0,
                 capacity_tokens=100_000, max_batch=8)


def run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # type: ignore[arg-type]


def ask(text: str, system: str = SYSTEM, **fields: Any) -> ChatRequest:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return ChatRequest(model="qwen3-8b", messages=messages, **fields)


def shared_prefix(a: ChatRequest, b: ChatRequest) -> int:
    x, y = render_prompt(a.messages), render_prompt(b.messages)
    same = [p == q for p, q in zip(x, y, strict=False)]
    return same.index(False) if False in same else len(same)


# ---- tokens and replies -----------------------------------------------------------------
def test_tokens_join_back_into_the_text() -> None:
    text = "Hello, world!  12345 internationalization_x\n<|im_end|>"
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert tokens[:4] == ["Hello", ",", " world", "!"]
    assert "<|im_end|>" in tokens and " 123" in tokens and "45" in tokens


def test_the_same_seed_gives_the_same_run_and_another_seed_does_not() -> None:
    async def scenario(seed: int) -> list[ChatResult]:
        engine = SimEngine("qwen3-8b", seed=seed, max_batch=4)
        return list(await asyncio.gather(*(engine.chat(ask(f"Question {i}?"))
                                           for i in range(12))))

    first, again, other = run(lambda: scenario(7)), run(lambda: scenario(7)), run(
        lambda: scenario(8))
    assert first == again
    assert [r.content for r in first] != [r.content for r in other]
    assert len({r.completion_tokens for r in first}) > 1  # lengths are drawn, not fixed


def test_max_tokens_caps_the_reply() -> None:
    result = run(lambda: SimEngine(seed=3).chat(ask("Long story?", params={"max_tokens": 5})))
    assert result.completion_tokens == 5 and result.finish_reason == "length"
    assert len(tokenize(result.content)) == 5


class Address(BaseModel):
    city: str
    zip_code: str = Field(min_length=5, max_length=5)


class Ticket(BaseModel):
    category: Literal["billing", "technical", "general"]
    urgent: bool
    score: float = Field(ge=0, le=1)
    count: int = Field(gt=2, lt=9)
    address: Address
    tags: list[str]
    history: list[Address] = Field(min_length=1)
    note: str | None = None


def test_json_schema_replies_validate() -> None:
    schema = Ticket.model_json_schema()
    assert "$defs" in schema  # the nested model comes as a $ref, as pydantic emits it

    async def many() -> list[ChatResult]:
        engine = SimEngine()
        return [await engine.chat(ask(f"Ticket {i}", json_schema=schema)) for i in range(25)]

    results = run(many)
    tickets = [Ticket.model_validate_json(r.content) for r in results]
    assert {t.category for t in tickets} == {"billing", "technical", "general"}
    assert {t.urgent for t in tickets} == {True, False}
    assert all(r.completion_tokens == len(tokenize(r.content)) for r in results)


def test_fake_json_covers_tuples_maps_and_formats() -> None:
    import random

    class Shape(BaseModel):
        pair: tuple[int, str]
        counts: dict[str, int]
        when: Any = None

    value = fake_json(Shape.model_json_schema(), random.Random(0))
    Shape.model_validate(value)


TOOLS = [{"type": "function", "function": {
    "name": "lookup_order", "description": "Find an order.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "integer"},
                                                    "reason": {"type": "string"}},
                   "required": ["order_id", "reason"]}}}]


def test_a_tool_request_calls_the_first_tool_then_answers() -> None:
    async def turns() -> tuple[ChatResult, ChatResult]:
        engine = SimEngine()
        first = await engine.chat(ask("Where is my order?", tools=TOOLS))
        call = first.tool_calls[0]
        history = [*ask("Where is my order?").messages,
                   {"role": "assistant", "content": None, "tool_calls": [{
                       "id": call.id, "type": "function",
                       "function": {"name": call.name, "arguments": call.arguments}}]},
                   {"role": "tool", "tool_call_id": call.id, "content": "shipped"}]
        second = await engine.chat(ChatRequest(model="qwen3-8b", messages=history, tools=TOOLS))
        return first, second

    first, second = run(turns)
    assert first.finish_reason == "tool_calls" and first.tool_calls[0].name == "lookup_order"
    arguments = json.loads(first.tool_calls[0].arguments)
    assert isinstance(arguments["order_id"], int) and isinstance(arguments["reason"], str)
    assert second.tool_calls == [] and second.content and second.finish_reason == "stop"
    # the second prompt holds the first reply verbatim, so its blocks were cached
    assert second.cached_tokens >= first.prompt_tokens + first.completion_tokens - 16


# ---- the prefix cache ---------------------------------------------------------------------
def test_a_shared_prefix_is_cached_and_flush_drops_it() -> None:
    one, two, three = ask("First question?"), ask("Second question?"), ask("Third question?")

    async def scenario() -> tuple[list[ChatResult], int, dict[str, float]]:
        engine = SimEngine("qwen3-8b", block_tokens=16)
        first, second = await engine.chat(one), await engine.chat(two)
        flushed = await engine.flush()
        third = await engine.chat(three)
        return [first, second, third], flushed, await engine.metrics()

    (first, second, third), flushed, metrics = run(scenario)
    assert first.cached_tokens == 0
    assert second.cached_tokens == shared_prefix(one, two) // 16 * 16 > 200
    assert flushed > 0 and third.cached_tokens == 0
    assert metrics["prompt_tokens_cached_total"] == second.cached_tokens
    assert metrics["prompt_tokens_total"] == sum(
        r.prompt_tokens - r.cached_tokens for r in (first, second, third))


def test_a_faster_first_token_when_the_prefix_is_cached() -> None:
    async def twice() -> tuple[ChatResult, ChatResult]:
        engine = SimEngine("qwen3-8b")
        return await engine.chat(ask("One?")), await engine.chat(ask("Two?"))

    cold, warm = run(twice)
    assert warm.cached_tokens > 0 and warm.ttft_s < cold.ttft_s


def test_cache_prompt_false_computes_the_whole_prompt_again() -> None:
    async def four() -> list[ChatResult]:
        engine = SimEngine("qwen3-8b")
        return [await engine.chat(ask("One?")),
                await engine.chat(ask("Two?", params={"cache_prompt": False})),
                await engine.chat(ask("Three?")),  # as a served client's field reaches it:
                await engine.chat(ask("Four?", params={"extra_body": {"cache_prompt": False}}))]

    _, uncached, third, served = run(four)
    assert uncached.cached_tokens == served.cached_tokens == 0
    assert third.cached_tokens > 0  # what it computed was cached as any other's
    assert uncached.ttft_s is not None and third.ttft_s is not None
    assert uncached.ttft_s > third.ttft_s


def words(word: str, prompt_tokens: int) -> ChatRequest:
    """A one-message request whose prompt is exactly ``prompt_tokens`` tokens long."""
    overhead = len(render_prompt([{"role": "user", "content": ""}]))
    text = " ".join([word] * (prompt_tokens - overhead))
    request = ChatRequest(model="toy", messages=[{"role": "user", "content": text}],
                          params={"max_tokens": 1})
    assert len(render_prompt(request.messages)) == prompt_tokens
    return request


def test_least_recently_used_blocks_are_evicted_first() -> None:
    # 70-token prompts: 4 full blocks of 16 stay cached after each request; 10 blocks fit.
    a, b, c = words("alpha", 70), words("bravo", 70), words("charl", 70)

    async def scenario(capacity: int) -> list[ChatResult]:
        engine = SimEngine(TOY, capacity_tokens=capacity, block_tokens=16)
        return [await engine.chat(r) for r in (a, b, a, c, a, b)]

    roomy = run(lambda: scenario(100_000))
    tight = run(lambda: scenario(160))
    assert [r.cached_tokens for r in roomy] == [0, 0, 64, 0, 64, 64]
    # c needs 5 blocks with 2 free: the 3 evicted are b's (least recently used; a was
    # inserted first but used again since), deepest first, so b keeps only its first block.
    assert [r.cached_tokens for r in tight] == [0, 0, 64, 0, 64, 16]


def test_a_request_larger_than_the_cache_is_refused() -> None:
    engine = SimEngine(TOY, capacity_tokens=64)
    with pytest.raises(BackendError, match="exceed the KV capacity") as info:
        run(lambda: engine.chat(words("alpha", 70)))
    assert not info.value.retryable


def test_slots_keep_their_own_prefixes_and_erase_alone() -> None:
    async def scenario() -> list[int]:
        engine = SimEngine("qwen3-8b")
        seen = [(await engine.chat(ask("a", slot=0))).cached_tokens,
                (await engine.chat(ask("b", slot=1))).cached_tokens,   # slot 0's prefix unseen
                (await engine.chat(ask("c", slot=0))).cached_tokens]
        erased = await engine.erase(0)
        seen += [(await engine.chat(ask("d", slot=0))).cached_tokens,
                 (await engine.chat(ask("e", slot=1))).cached_tokens, erased]
        return seen

    first0, first1, again0, after_erase0, again1, erased = run(scenario)
    assert first0 == first1 == 0 and again0 > 0
    assert erased > 0 and after_erase0 == 0 and again1 > 0


def test_unpinned_requests_get_a_slot_as_llama_cpp_assigns_them() -> None:
    """With assign_slots, a request that names no slot goes to the idle slot sharing the
    longest prefix with it, else to the one used least recently, and a slot holds one
    sequence; without, every unpinned request shares one cache."""
    a, b, c = words("alpha", 70), words("bravo", 70), words("charl", 70)
    a_again = words("alpha", 90)

    async def scenario(assign: bool) -> list[int]:
        engine = SimEngine(TOY, max_batch=2, block_tokens=16, assign_slots=assign)
        return [(await engine.chat(r)).cached_tokens for r in (a, b, a_again, c, a_again)]

    assert run(lambda: scenario(False)) == [0, 0, 64, 0, 80]
    # a takes slot 0, b the unused slot 1, a's follow-up finds slot 0 by its prefix; c
    # shares nothing, so takes the least recently used slot (1, b's); a again keeps slot 0
    assert run(lambda: scenario(True)) == [0, 0, 64, 0, 80]

    async def crowded(assign: bool) -> list[int]:
        engine = SimEngine(TOY, max_batch=2, block_tokens=16, assign_slots=assign)
        return [(await engine.chat(r)).cached_tokens for r in (a, b, c, a_again)]

    # three conversations on two slots: c overwrites a's slot (used least recently), so
    # a's follow-up finds its context nowhere; one shared cache still holds it
    assert run(lambda: crowded(True)) == [0, 0, 0, 0]
    assert run(lambda: crowded(False)) == [0, 0, 0, 64]


def test_an_assigned_slot_is_reused_by_a_similar_prompt_and_loses_its_old_context() -> None:
    # both slots hold a context; a third prompt shares the system prompt with slot 0's
    # only, so it takes slot 0 (llama.cpp's similarity rule) and overwrites that context
    first, second = ask("first question"), ask("second question")

    async def scenario() -> list[int]:
        engine = SimEngine("qwen3-8b", max_batch=2, assign_slots=True)
        seen = [(await engine.chat(r)).cached_tokens for r in (
            first, ask("x", system="A different system prompt. " * 8), second, first)]
        erased = await engine.erase(0) + await engine.erase(1)
        return [*seen, erased, (await engine.chat(first)).cached_tokens]

    cold, other, similar, first_again, erased, after_erase = run(scenario)
    shared = shared_prefix(first, second)
    assert cold == other == 0
    assert shared - 16 <= similar <= shared
    # first's own context is gone from slot 0: it finds only the prefix it shares with second
    assert first_again == similar
    assert erased > 0 and after_erase == 0


def test_a_saved_slot_comes_back_in_another_slot() -> None:
    async def scenario() -> tuple[int, int, int, list[int]]:
        engine = SimEngine("qwen3-8b", max_batch=2, assign_slots=True)
        await engine.chat(ask("first question", slot=0))
        saved = await engine.save(0, "first.bin")
        await engine.chat(ask("x", system="Another system prompt that shares nothing.", slot=0))
        restored = await engine.restore(1, "first.bin")
        again = (await engine.chat(ask("first question", slot=1))).cached_tokens
        lost = (await engine.chat(ask("first question", slot=0))).cached_tokens
        with pytest.raises(BackendError, match="no saved slot"):
            await engine.restore(0, "missing.bin")
        return saved, restored, again, [lost]

    saved, restored, again, (lost,) = run(scenario)
    # the save holds the whole blocks of prompt and reply; slot 0 was overwritten since,
    # slot 1 has the saved sequence back
    assert saved > 0 and restored == saved and again > 0 and lost == 0


# ---- the latency model and the queue --------------------------------------------------------
def test_a_lone_request_costs_what_the_profile_says() -> None:
    request = words("alpha", 50)
    request = ChatRequest(model="toy", messages=request.messages, params={"max_tokens": 10})
    result = run(lambda: SimEngine(TOY).chat(request))
    assert result.ttft_s == pytest.approx(0.01 + 0.001 * 50)
    # nine more tokens, each a decode step of one sequence
    assert result.duration_s - result.ttft_s == pytest.approx(9 * (0.02 + 0.005))


def test_decode_steps_slow_down_as_the_batch_grows() -> None:
    def per_token(results: list[ChatResult]) -> float:
        r = results[0]
        return (r.duration_s - r.ttft_s) / (r.completion_tokens - 1)

    async def batch(n: int) -> list[ChatResult]:
        engine = SimEngine("qwen3-8b")
        requests = [ask(f"q{i}", params={"max_tokens": 32}) for i in range(n)]
        return list(await asyncio.gather(*(engine.chat(r) for r in requests)))

    assert per_token(run(lambda: batch(1))) < per_token(run(lambda: batch(64)))


NATO = ["alpha", "bravo", "charl", "delta", "echo", "foxtr"]  # prompts that share no block


def test_requests_beyond_max_batch_queue_and_wait_longer() -> None:
    async def scenario(max_batch: int) -> list[ChatResult]:
        engine = SimEngine(TOY, max_batch=max_batch)
        requests = [ChatRequest(model="toy", messages=words(w, 40).messages,
                                params={"max_tokens": 5}) for w in NATO]
        return list(await asyncio.gather(*(engine.chat(r) for r in requests)))

    wide, narrow = run(lambda: scenario(6)), run(lambda: scenario(2))
    assert len({r.ttft_s for r in wide}) == 1  # all six prefill in the first step
    ttfts = [r.ttft_s for r in narrow]
    assert ttfts == sorted(ttfts) and ttfts[0] == ttfts[1] < ttfts[2] == ttfts[3] < ttfts[4]
    assert ttfts[-1] > max(r.ttft_s for r in wide)


def test_higher_priority_is_served_first() -> None:
    async def scenario() -> list[ChatResult]:
        engine = SimEngine(TOY, max_batch=1)
        priorities = [None, 10, 90, 10]
        return list(await asyncio.gather(*(engine.chat(
            ChatRequest(model="toy", messages=words("alpha", 40).messages,
                        params={"max_tokens": 3}, priority=p)) for p in priorities)))

    none, low, high, low_later = (r.ttft_s for r in run(scenario))
    assert high < low < low_later < none


def test_a_caller_that_gives_up_frees_its_place() -> None:
    async def scenario() -> tuple[list[ChatResult], dict[str, float]]:
        engine = SimEngine(TOY, max_batch=1)
        requests = [ChatRequest(model="toy", messages=words(w, 40).messages,
                                params={"max_tokens": 3}) for w in NATO[:3]]
        first, dropped, last = (asyncio.ensure_future(engine.chat(r)) for r in requests)
        await asyncio.sleep(0)
        dropped.cancel()
        return list(await asyncio.gather(first, last)), await engine.metrics()

    (first, last), metrics = run(scenario)
    assert metrics["requests_finished_total"] == 2 and metrics["kv_cache_usage_ratio"] == 0
    assert last.ttft_s == pytest.approx(first.duration_s + 0.01 + 0.001 * 40)


def test_closing_the_engine_fails_what_it_still_holds() -> None:
    async def scenario() -> BaseException | ChatResult:
        engine = SimEngine(TOY, clock="real")
        pending = asyncio.ensure_future(engine.chat(words("alpha", 40)))
        await asyncio.sleep(0)
        await engine.aclose()
        return (await asyncio.gather(pending, return_exceptions=True))[0]

    error = run(scenario)
    assert isinstance(error, BackendError) and error.retryable


# ---- clocks ---------------------------------------------------------------------------------
def test_two_thousand_concurrent_requests_finish_in_simulated_time() -> None:
    async def scenario() -> tuple[list[ChatResult], dict[str, float]]:
        engine = SimEngine("qwen3-8b", seed=5)
        requests = [ask(f"Customer {i} asks about order {i}.") for i in range(2000)]
        results = await asyncio.gather(*(engine.chat(r) for r in requests))
        return list(results), await engine.metrics()

    results, metrics = run(scenario)
    assert len(results) == 2000 and metrics["requests_finished_total"] == 2000
    ttfts = [r.ttft_s for r in results]
    assert ttfts == sorted(ttfts)  # first come, first served: monotone with queue position
    assert ttfts[-1] > ttfts[0] > 0
    assert all(0 < r.ttft_s <= r.duration_s <= metrics["sim_time_seconds"] for r in results)
    assert metrics["tokens_predicted_total"] == sum(r.completion_tokens for r in results)
    assert metrics["requests_processing"] == metrics["requests_deferred"] == 0
    assert metrics["prompt_tokens_cached_total"] > 0  # later waves reuse the system prompt


def test_the_virtual_clock_waits_for_callers_between_their_calls() -> None:
    """A caller's next request arrives when its previous reply came, however many times it
    yields in between, while another caller's long request keeps the engine busy."""

    async def scenario() -> tuple[float, float, float]:
        engine = SimEngine("qwen3-8b")

        async def chain() -> tuple[float, float]:
            first = await engine.chat(ask("short", params={"max_tokens": 4}))
            for _ in range(50):
                await asyncio.sleep(0)  # framework hops between two calls
            arrived = engine.clock.now()
            await engine.chat(ask("again", params={"max_tokens": 4}))
            return first.duration_s, arrived

        long = engine.chat(ask("long", params={"max_tokens": 400}))
        (first_done, arrived), long_result = await asyncio.gather(chain(), long)
        return first_done, arrived, long_result.duration_s

    first_done, arrived, long_done = run(scenario)
    assert arrived == pytest.approx(first_done) and arrived < long_done


def test_engines_sharing_a_clock_stay_in_step() -> None:
    async def scenario() -> tuple[ChatResult, ChatResult, float]:
        clock = VirtualClock()
        light, heavy = SimEngine("qwen3-4b", clock=clock), SimEngine("qwen3-8b", clock=clock)
        first = await light.chat(ask("classify"))
        second = await heavy.chat(ask("answer"))
        return first, second, clock.now()

    first, second, now = run(scenario)
    assert now == pytest.approx(first.duration_s + second.duration_s)


def test_the_virtual_clock_moves_only_once_the_loop_has_nothing_else_to_run() -> None:
    async def scenario() -> tuple[list[float], float]:
        clock = VirtualClock()
        seen = []

        async def busy() -> None:  # work at the same instant, in many small steps
            for _ in range(200):
                seen.append(clock.now())
                await asyncio.sleep(0)

        await asyncio.gather(clock.sleep_until(5.0), busy())
        return seen, clock.now()

    seen, now = run(scenario)
    assert set(seen) == {0.0} and now == 5.0


def test_a_task_that_yields_forever_does_not_stop_the_virtual_clock() -> None:
    async def scenario() -> float:
        clock = VirtualClock()

        async def spin() -> None:
            while True:
                await asyncio.sleep(0)

        spinner = asyncio.create_task(spin())
        await clock.sleep_until(2.0)
        spinner.cancel()
        return clock.now()

    assert run(scenario) == 2.0


def test_a_virtual_clock_goes_on_in_a_later_event_loop() -> None:
    clock = VirtualClock()
    run(lambda: clock.sleep_until(1.0))
    run(lambda: clock.sleep_until(3.0))
    assert clock.now() == 3.0


def test_the_real_clock_reports_simulated_times() -> None:
    fast = SimProfile(name="fast", machine="none", prefill_base_s=0.001,
                      prefill_per_token_s=0.0001, decode_base_s=0.002, decode_per_seq_s=0.0,
                      decode_per_kv_token_s=0.0, capacity_tokens=10_000, max_batch=2)
    request = ChatRequest(model="fast", messages=words("alpha", 30).messages,
                          params={"max_tokens": 4})
    result = run(lambda: SimEngine(fast, clock="real").chat(request))
    assert result.ttft_s == pytest.approx(0.001 + 0.0001 * 30, rel=0.5)
    assert result.duration_s >= result.ttft_s and result.completion_tokens == 4


def test_an_unstreamed_reply_has_no_first_token_time_and_arrives_whole() -> None:
    pieces: list[str] = []
    request = ChatRequest(model="instant", messages=words("alpha", 30).messages,
                          params={"max_tokens": 4}, on_token=pieces.append, stream=False)
    result = run(lambda: SimEngine("instant").chat(request))
    assert result.ttft_s is None and pieces == [result.content] and result.content


# ---- declaration and profiles ---------------------------------------------------------------
def test_the_engine_is_declared_as_a_sim_backend() -> None:
    engine = SimEngine("qwen3-4b", name="fast")
    assert engine.spec == orla.backends.simulator("fast", "qwen3-4b", clock="virtual")
    assert engine.spec.kind == "sim" and engine.spec.capabilities.json_schema


def test_profiles_are_ordered_by_model_size_and_unknown_ones_are_named() -> None:
    small, large = PROFILES["qwen3-4b"], PROFILES["qwen3-8b"]
    assert small.decode_base_s < large.decode_base_s
    assert small.prefill_per_token_s < large.prefill_per_token_s
    assert large.capacity_tokens < small.capacity_tokens
    assert get_profile(orla.backends.DEFAULT_LOCAL_MODEL).name == "smollm2-135m"
    with pytest.raises(ValueError, match="known profiles: instant, qwen3-4b"):
        get_profile("gpt-9")


# ---- the HTTP surface -------------------------------------------------------------------------
@pytest.fixture
def served() -> Iterator[str]:
    url, stop = serve_http(SimEngine("qwen3-8b", seed=2))
    yield url
    stop()


def through_backend(url: str, *requests: ChatRequest) -> list[ChatResult]:
    async def go() -> list[ChatResult]:
        backend = OpenAICompatibleBackend(orla.backends.sglang("sim", url=url))
        try:
            return [await backend.chat(r) for r in requests]
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_the_openai_backend_streams_from_the_simulator(served: str) -> None:
    first, second, ticket, tool = through_backend(
        served, ask("One?", priority=50), ask("Two?"),
        ask("Ticket", json_schema=Ticket.model_json_schema()), ask("Order?", tools=TOOLS))
    assert first.cached_tokens == 0 and second.cached_tokens > 200
    assert first.completion_tokens > 0 and first.content
    Ticket.model_validate_json(ticket.content)
    assert tool.tool_calls[0].name == "lookup_order"
    assert json.loads(tool.tool_calls[0].arguments)["order_id"] is not None


def test_a_plain_completion_carries_usage_and_timings(served: str) -> None:
    async def go() -> tuple[Any, Any]:
        client = openai.AsyncOpenAI(base_url=served + "/v1", api_key="none")
        try:
            messages: Any = ask("One?").messages
            await client.chat.completions.create(model="qwen3-8b", messages=messages)
            again = await client.chat.completions.create(
                model="qwen3-8b", messages=ask("Two?").messages,  # type: ignore[arg-type]
                max_tokens=7)
            return again, await client.models.list()
        finally:
            await client.close()

    reply, models = asyncio.run(go())
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 7
    cached = reply.usage.prompt_tokens_details.cached_tokens
    assert cached > 200 and reply.model_extra["timings"]["cache_n"] == cached
    assert [m.id for m in models.data] == ["qwen3-8b"]


def test_cache_prompt_false_over_http_computes_the_whole_prompt(served: str) -> None:
    def cached(client: openai.OpenAI, text: str, **extra: Any) -> int:
        reply = client.chat.completions.create(
            model="qwen3-8b", messages=ask(text).messages, max_tokens=4,  # type: ignore[arg-type]
            extra_body=extra or None)
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        return reply.usage.prompt_tokens_details.cached_tokens or 0

    with openai.OpenAI(base_url=served + "/v1", api_key="none") as client:
        counts = [cached(client, "One?"), cached(client, "Two?", cache_prompt=False),
                  cached(client, "Three?", cache_prompt=True)]
    assert counts[0] == counts[1] == 0 and counts[2] > 200


def test_a_body_is_read_with_its_stream_flag_and_the_fields_orla_does_not_read() -> None:
    request = chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 3, "cache_prompt": False, "user": "u1"})
    assert request.stream is False and request.params == {
        "max_tokens": 3, "extra_body": {"cache_prompt": False, "user": "u1"}}
    assert chat_request({"messages": [{"role": "user", "content": "hi"}],
                         "stream": True}).stream is True


def test_metrics_flush_and_slots_over_http(served: str) -> None:
    through_backend(served, ask("One?"), ask("Two?"))

    async def controls() -> tuple[dict[str, float], list[dict[str, Any]], int, list[bool]]:
        control, nobody = LlamaCppControl(served), LlamaCppControl("http://127.0.0.1:9")
        try:
            up = [await control.health(), await control.health(), await nobody.health()]
            return (await control.metrics(), await control.slots(), await control.erase(0),
                    up)
        finally:
            await control.aclose()
            await nobody.aclose()

    metrics, slots, erased, up = asyncio.run(controls())
    assert up == [True, True, False]
    assert metrics["prompt_tokens_cached_total"] > 200 and metrics["requests_finished_total"] == 2
    assert len(slots) == PROFILES["qwen3-8b"].max_batch and erased == 0
    assert httpx.post(served + "/flush_cache").status_code == 200
    assert httpx.get(served + "/health").json() == {"status": "ok"}


def test_streamed_calls_reuse_one_kept_alive_connection(served: str) -> None:
    async def calls() -> int:
        backend = OpenAICompatibleBackend(orla.backends.vllm("sim", url=served))
        try:
            for text in ("One?", "Two?", "Three?"):
                assert (await backend.chat(ask(text))).content
            # a reply read to its end leaves its connection in the pool, idle
            assert isinstance(backend._http, ConnectionPool)
            return len(backend._http._idle)
        finally:
            await backend.aclose()

    assert asyncio.run(calls()) == 1


def test_slot_save_and_restore_over_http(served: str) -> None:
    async def controls() -> tuple[int, int, int]:
        control = LlamaCppControl(served)
        backend = OpenAICompatibleBackend(orla.backends.llamacpp("sim", url=served))
        try:
            await backend.chat(ask("Keep this one.", slot=2))
            saved = await control.save(2, "kept.bin")
            erased = await control.erase(2)
            return saved, erased, await control.restore(3, "kept.bin")
        finally:
            await control.aclose()
            await backend.aclose()

    saved, erased, restored = asyncio.run(controls())
    assert saved > 0 and erased > 0 and restored == saved
    missing = httpx.post(served + "/slots/0?action=restore", json={"filename": "nope.bin"})
    unnamed = httpx.post(served + "/slots/0?action=save", json={})
    assert missing.status_code == unnamed.status_code == 400
    assert "no saved slot" in missing.json()["error"]["message"]
    (after,) = through_backend(served, ask("Three?"))
    assert after.cached_tokens == 0


def test_a_raw_stream_ends_with_finish_then_done(served: str) -> None:
    body = {"model": "m", "stream": True, "max_tokens": 3,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", served + "/v1/chat/completions", json=body) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 3 + ["length"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def test_bad_requests_get_openai_style_errors(served: str) -> None:
    response = httpx.post(served + "/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 400 and "messages" in response.json()["error"]["message"]
    assert httpx.get(served + "/nowhere").status_code == 404


# ---- the prompt, tokenized a message at a time --------------------------------------------
MESSAGES = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool"]),
    "content": st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\x1f \n"),
                       max_size=40)}), max_size=4)


@settings(max_examples=200, deadline=None)
@given(MESSAGES, st.booleans(), st.integers(0, 2**32), st.none() | st.integers(0, 99))
def test_the_prompt_tokenized_a_message_at_a_time_is_the_whole_texts_tokens(
        messages: list[dict[str, Any]], with_tools: bool, seed: int,
        request_seed: int | None) -> None:
    tools = [{"type": "function", "function": {"name": "look_up"}}] if with_tools else None
    whole = ([f"<|im_start|>system\n# Tools\n{json.dumps(tools)}<|im_end|>\n"] if tools
             else []) + [f"<|im_start|>{m['role']}\n{message_text(m)}<|im_end|>\n"
                         for m in messages]
    tokens, as_json = rendered(messages, tools)
    assert tokens == tokenize("".join(whole) + "<|im_start|>assistant\n")
    assert json.loads(as_json) == tokens and as_json == json.dumps(tokens)
    # block keys join a block's tokens with it: it may only ever be a token of its own
    assert all(BLOCK_SEPARATOR not in t or t == BLOCK_SEPARATOR for t in tokens)
    request = ChatRequest(messages=messages, model="m", params={"seed": request_seed})
    assert reply_seed(seed, request, as_json) == stable_seed(seed, request_seed, "m", tokens,
                                                             None)


@given(st.integers(0, 2**32), st.integers(0, 300))
def test_filler_tokens_are_what_the_tokenizer_makes_of_their_text(seed: int, count: int) -> None:
    tokens = filler_tokens(random.Random(seed), count)
    assert len(tokens) == count and tokenize("".join(tokens)) == tokens
