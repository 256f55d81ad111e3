"""Running plans: against the real llama.cpp engine, and a scripted backend for the tool
loop. Assertions read the engine's own counters and the run's records, never wording."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Sequence
from typing import Any, Literal

import pytest
from pydantic import BaseModel, field_validator

import orla_sdk as orla
from orla_sdk.agents import AgentEvent, AgentPolicy
from orla_sdk.backends.base import ChatRequest, ChatResult, ToolCall
from orla_sdk.backends.engine import LocalEngine, free_port
from orla_sdk.ir import BackendSpec, Capabilities
from orla_sdk.runtime.scheduler import BackendQueue
from orla_sdk.runtime.structured import close_cut_json

MODEL = orla.backends.DEFAULT_LOCAL_MODEL
PROBLEM = " ".join(f"Fact {i}: the warehouse ships parcels on weekday {i % 5}." for i in range(25))


class Triage(BaseModel):
    category: Literal["billing", "technical", "general"]
    needs_escalation: bool


class Impossible(BaseModel):
    n: int

    @field_validator("n")
    @classmethod
    def never(cls, value: int) -> int:
        raise ValueError("no number is good enough")


@orla.stage(model="light")
def classify(ticket: str) -> Triage:
    result: Triage = orla.generate(f"Classify this support ticket:\n{ticket}", output=Triage,
                                   max_tokens=60, temperature=0)
    return result


@orla.stage(model="light")
def escalate(t: Triage) -> str:
    return str(orla.generate(f"Tell the customer a human takes over this {t.category} ticket.",
                             max_tokens=8))


@orla.stage(model="light")
def answer(t: Triage, ticket: str) -> str:
    return str(orla.generate(f"Answer the customer in one sentence: {ticket}", max_tokens=8))


@orla.workflow
def support(ticket: str) -> str:
    t = classify(ticket)
    if t.needs_escalation:
        return escalate(t)
    return answer(t, ticket)


@orla.stage(model="light")
def first_step(problem: str) -> str:
    return str(orla.generate(f"{problem}\nStep 1: restate the problem.", max_tokens=8))


@orla.stage(model="light")
def second_step(problem: str, previous: str) -> str:
    return str(orla.generate(f"{problem}\nStep 2: continue from: {previous}", max_tokens=8))


@orla.stage(model="light", cache="flush")
def first_step_flushed(problem: str) -> str:
    return str(orla.generate(f"{problem}\nStep 1: restate the problem.", max_tokens=8))


@orla.workflow
def two_steps(problem: str) -> str:
    return second_step(problem, first_step(problem))


@orla.workflow
def two_steps_flushed(problem: str) -> str:
    return second_step(problem, first_step_flushed(problem))


@orla.stage(model="light")
def stubborn(text: str) -> Impossible:
    result: Impossible = orla.generate(f"Give a number for: {text}", output=Impossible,
                                       max_tokens=20, max_retries=2)
    return result


@orla.workflow
def never_valid(text: str) -> Impossible:
    return stubborn(text)


@orla.stage(model="light")
def topics(text: str) -> list[str]:
    result: list[str] = orla.generate(f"List two short topics about: {text}",
                                      output=list[str], max_tokens=40, temperature=0)
    return result[:3]


@orla.stage(model="light")
def summarize(topic: str) -> str:
    return str(orla.generate(f"One word about {topic}", max_tokens=4))


@orla.workflow
def fan_out(text: str) -> list[str]:
    return [summarize(t) for t in topics(text)]


def compiled(wf: Any, engine: LocalEngine) -> orla.Plan:
    return orla.compile(wf, backends=[orla.backends.llamacpp("local", url=engine.url)],
                        mapping={"light": f"local/{MODEL}"})


# ---- against the real engine ---------------------------------------------------------
def test_a_typed_branch_runs_one_path_with_engine_counters(llama_engine: LocalEngine) -> None:
    result = orla.run(compiled(support, llama_engine), ticket="I was charged twice.")
    assert result.ok, result.error
    taken = result.branches["branch:classify.needs_escalation"]
    assert taken in (True, False)
    ran, skipped = ("escalate", "answer") if taken else ("answer", "escalate")
    assert result.stage(ran).status == "done" and result.stage(skipped).status == "skipped"
    triage = result.stage("classify")
    assert triage.backend == "local" and triage.model == MODEL
    assert triage.prompt_tokens > 0 and triage.completion_tokens > 0
    assert triage.ttft_s is not None and 0 < triage.ttft_s <= triage.duration_s
    assert isinstance(result.output, str)
    assert result.cache_log[-1]["action"].startswith("erase slot")


def test_a_preserve_span_reuses_the_cache_and_a_flush_drops_it(
        llama_engine: LocalEngine) -> None:
    kept = orla.run(compiled(two_steps, llama_engine), problem=PROBLEM)
    dropped = orla.run(compiled(two_steps_flushed, llama_engine), problem=PROBLEM)
    assert kept.ok and dropped.ok
    prefix_tokens = kept.stage("first_step").prompt_tokens
    assert kept.stage("first_step").cached_tokens < 50  # the slot was erased by the last run
    assert kept.stage("second_step").cached_tokens > prefix_tokens // 2
    assert kept.stage("first_step").cache_action.startswith("keep slot")
    assert dropped.stage("first_step_flushed").cache_action.startswith("erase slot")
    assert dropped.stage("second_step").cached_tokens < 50


def test_a_malformed_answer_is_retried_then_fails_the_run_cleanly(
        llama_engine: LocalEngine) -> None:
    result = orla.run(compiled(never_valid, llama_engine), text="anything")
    assert not result.ok
    assert "stage 'stubborn'" in (result.error or "") and "after 2 retries" in (result.error or "")
    assert len(result.stage("stubborn").calls) == 3
    assert result.stage("stubborn").status == "failed"
    with pytest.raises(orla.RunError, match="stubborn"):
        result.raise_for_error()


def test_a_map_runs_its_body_once_per_item(llama_engine: LocalEngine) -> None:
    result = orla.run(compiled(fan_out, llama_engine), text="shipping delays")
    assert result.ok, result.error
    items = result.stage("topics").calls and len(result.output)
    bodies = [s for s in result.stages if s.node == "summarize"]
    assert len(bodies) == items and sorted(s.item for s in bodies) == list(range(items))
    assert all(isinstance(x, str) for x in result.output)


def test_many_runs_share_one_pool(llama_engine: LocalEngine) -> None:
    plan = compiled(two_steps, llama_engine)

    async def many() -> list[orla.RunResult]:
        async with orla.BackendPool(plan.backends) as pool:
            return list(await asyncio.gather(
                *(orla.arun(plan, pool=pool, problem=f"{PROBLEM} Case {i}.") for i in range(4))))

    results = asyncio.run(many())
    assert all(r.ok for r in results)
    assert len({r.run_id for r in results}) == 4
    assert all(len(r.stages) == 2 for r in results)


def test_an_engine_that_is_down_is_a_clear_error() -> None:
    plan = orla.compile(two_steps, backends=[
        orla.backends.llamacpp("local", url=f"http://127.0.0.1:{free_port()}")],
        mapping={"light": f"local/{MODEL}"})
    with pytest.raises(orla.BackendDown, match=r"'local': cannot reach llama\.cpp"):
        orla.run(plan, problem="x")


def test_inputs_are_checked_before_anything_runs(llama_engine: LocalEngine) -> None:
    plan = compiled(two_steps, llama_engine)
    with pytest.raises(orla.OrlaError, match="needs input 'problem'"):
        orla.run(plan)
    with pytest.raises(orla.OrlaError, match=r"no input\(s\) \['problme'\]"):
        orla.run(plan, problme="x")


def test_generate_outside_a_run_says_where_to_call_it() -> None:
    with pytest.raises(orla.OrlaError, match=r"outside a stage run by orla\.run"):
        orla.generate("hello")


# ---- the tool loop, on a scripted backend ------------------------------------------------
class Scripted:
    """A backend that answers from a script and keeps the requests it got."""

    def __init__(self, replies: list[str]) -> None:
        self.spec = BackendSpec(name="scripted", kind="openai", url="http://127.0.0.1:9/v1",
                                capabilities=Capabilities(tool_calling=False))
        self.replies = list(replies)
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        return ChatResult(content=self.replies.pop(0), tool_calls=[], finish_reason="stop",
                          prompt_tokens=10, completion_tokens=5, cached_tokens=0,
                          ttft_s=0.01, duration_s=0.02)

    async def aclose(self) -> None:
        return None


def lookup_order(order_id: str) -> str:
    """Look up an order."""
    return f"order {order_id}: shipped"


def broken_tool(order_id: str) -> str:
    """A tool that fails."""
    raise RuntimeError("database unavailable")


@orla.stage(model="light", tools=[lookup_order, broken_tool])
def agent(question: str) -> str:
    return str(orla.generate(question, max_turns=3))


@orla.workflow
def tool_flow(question: str) -> str:
    return agent(question)


def run_scripted(replies: list[str], policies: Sequence[AgentPolicy] = ()
                 ) -> tuple[orla.RunResult, Scripted]:
    backend = Scripted(replies)
    plan = orla.compile(tool_flow, backends=[backend.spec],
                        mapping={"light": "scripted/any-model"})

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, clients={"scripted": backend},
                                    policies=policies) as pool:
            return await orla.arun(plan, pool=pool, question="Where is order 7?")

    return asyncio.run(go()), backend


def test_emulated_tool_calls_run_and_feed_results_back() -> None:
    result, backend = run_scripted([
        json.dumps({"tool": "lookup_order", "arguments": {"order_id": "7"}}),
        json.dumps({"tool": "no_such_tool", "arguments": {}}),
        json.dumps({"tool": "broken_tool", "arguments": {"order_id": "7"}}),
        json.dumps({"answer": "It shipped."}),
    ])
    assert result.ok, result.error
    assert result.output == "It shipped."
    fed_back = [m["content"] for m in backend.requests[-1].messages if m["role"] == "user"]
    assert "Result of lookup_order: order 7: shipped" in fed_back
    assert any("there is no tool named 'no_such_tool'" in m for m in fed_back)
    assert any("broken_tool raised RuntimeError: database unavailable" in m for m in fed_back)
    schema = backend.requests[0].json_schema or {}
    assert [c["properties"].get("tool", {}).get("const") for c in schema["anyOf"]] == [
        "lookup_order", "broken_tool", None]
    last = backend.requests[-1].json_schema or {}
    assert [c["required"] for c in last["anyOf"]] == [["answer"]]  # no tools offered any more
    assert len(result.stage("agent").calls) == 4


def test_the_agent_layer_observes_each_call_and_tool_of_the_stages_agent() -> None:
    events: list[AgentEvent] = []

    class Recorder(AgentPolicy):
        def observe(self, event: AgentEvent) -> None:
            events.append(event)

    result, _ = run_scripted([
        json.dumps({"tool": "lookup_order", "arguments": {"order_id": "7"}}),
        json.dumps({"answer": "It shipped."})], policies=[Recorder()])
    assert result.ok, result.error
    assert [e.kind for e in events] == [
        "call_queued", "call_started", "call_finished", "tool_started", "tool_ended",
        "call_queued", "call_started", "call_finished", "turn"]
    assert {(e.key.workload, e.key.agent, e.key.run) for e in events[:-1]} == {
        ("tool_flow", "agent", result.run_id)}
    assert [e.key.step for e in events if e.kind == "call_started"] == [0, 1]
    assert events[3].data["tool"] == "lookup_order" and events[3].data["at"] > 0
    assert events[4].data["duration_s"] >= 0 and events[4].data["failed"] is False
    assert events[4].data["result"] == "order 7: shipped"
    assert events[2].data["prompt_tokens"] > 0 and events[-1].data["ended"] is True


def test_a_malformed_tool_reply_is_retried() -> None:
    result, backend = run_scripted(["not json", json.dumps({"answer": "done"})])
    assert result.ok and result.output == "done"
    assert "not valid" in backend.requests[1].messages[-1]["content"]


def test_native_tool_calls_run_and_their_results_go_back_as_tool_messages() -> None:
    backend = Scripted([])
    backend.spec.capabilities.tool_calling = True
    replies = [ChatResult(content="", tool_calls=[ToolCall("c1", "lookup_order",
                                                           '{"order_id": "7"}')],
                          finish_reason="tool_calls", prompt_tokens=10, completion_tokens=5,
                          cached_tokens=0, ttft_s=0.01, duration_s=0.02),
               ChatResult(content="It shipped.", tool_calls=[], finish_reason="stop",
                          prompt_tokens=20, completion_tokens=3, cached_tokens=10,
                          ttft_s=0.01, duration_s=0.02)]

    async def chat(request: ChatRequest) -> ChatResult:
        backend.requests.append(request)
        return replies.pop(0)

    backend.chat = chat  # type: ignore[method-assign]
    plan = orla.compile(tool_flow, backends=[backend.spec],
                        mapping={"light": "scripted/any-model"})
    unstarted = orla.BackendPool(plan.backends, clients={"scripted": backend})
    with pytest.raises(orla.OrlaError, match="not started"):
        orla.run(plan, pool=unstarted, question="Where is order 7?")

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, clients={"scripted": backend}) as pool:
            return await orla.arun(plan, pool=pool, question="Where is order 7?")

    result = asyncio.run(go())
    assert result.ok and result.output == "It shipped."
    first, second = backend.requests
    assert [t["function"]["name"] for t in first.tools] == ["lookup_order", "broken_tool"]
    assert first.json_schema is None
    assert second.messages[-1] == {"role": "tool", "tool_call_id": "c1",
                                   "content": "order 7: shipped"}
    assert second.messages[-2]["tool_calls"][0]["function"]["name"] == "lookup_order"


# ---- the scheduler ------------------------------------------------------------------------
def test_waiting_requests_are_served_by_priority_then_critical_path() -> None:
    async def scenario() -> list[str]:
        queue = BackendQueue("b", limit=1)
        served: list[str] = []

        async def request(name: str, priority: int, path: int) -> None:
            async with queue.turn(priority, path):
                served.append(name)
                await asyncio.sleep(0.01)

        holder = asyncio.create_task(request("first", 0, 0))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(request(n, p, c)) for n, p, c in [
            ("low", 10, 9), ("high", 90, 1), ("mid-short", 50, 1), ("mid-long", 50, 5)]]
        await asyncio.gather(holder, *waiters)
        return served

    assert asyncio.run(scenario()) == ["first", "high", "mid-long", "mid-short", "low"]


def test_the_customer_support_example_runs_on_its_own_engines() -> None:
    from orla_sdk.examples.customer_support import support as customer_support

    result = orla.run(orla.compile(customer_support))
    assert result.ok, result.error
    ran = {s.node for s in result.stages if s.status == "done"}
    assert {"classify", "policy_check", "route_ticket"} <= ran
    assert len(ran & {"reply", "acknowledge"}) == 1
    assert result.stage("classify").backend == "edge"
    assert result.stage("policy_check").backend == "datacenter"
    assert all(s.prompt_tokens > 0 for s in result.stages if s.status == "done")
    actions = {e["node"]: e["action"] for e in result.cache_log if e["node"]}
    assert actions["classify"].startswith("erase slot")
    assert actions["policy_check"].startswith("keep slot")


# ---- the tool loop, on the real engine ---------------------------------------------------
LOOKUPS: list[str] = []


def find_order(order_id: str) -> str:
    """Find an order by its id."""
    LOOKUPS.append(order_id)
    return f"order {order_id}: shipped on Monday"


@orla.stage(model="light", tools=[find_order])
def order_agent(question: str) -> str:
    return str(orla.generate(question, tool_choice="required", max_turns=2, max_tokens=150,
                             temperature=0))


@orla.workflow
def order_flow(question: str) -> str:
    return order_agent(question)


def test_the_small_model_calls_a_tool_through_emulation_and_answers(
        llama_engine: LocalEngine) -> None:
    backend = orla.backends.llamacpp("local", url=llama_engine.url)
    assert not backend.capabilities.tool_calling  # SmolLM2's template has no tool calls
    plan = orla.compile(order_flow, backends=[backend], mapping={"light": f"local/{MODEL}"})
    LOOKUPS.clear()
    result = orla.run(plan, question="Where is order 7? Use find_order.")
    assert result.ok, result.error
    calls = result.stage("order_agent").calls
    assert LOOKUPS and 2 <= len(calls) <= 3  # a tool turn, then at most one more and the answer
    assert isinstance(result.output, str)


class ToolThenAnswer(Scripted):
    """Calls lookup_order first, answers once the tool's result is in the messages."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        answered = any(str(m.get("content", "")).startswith("Result of")
                       for m in request.messages)
        reply = {"answer": "done"} if answered else {
            "tool": "lookup_order", "arguments": {"order_id": "7"}}
        await asyncio.sleep(0.01)
        return ChatResult(content=json.dumps(reply), tool_calls=[], finish_reason="stop",
                          prompt_tokens=10, completion_tokens=5, cached_tokens=0,
                          ttft_s=0.01, duration_s=0.02)


def test_sync_bodies_waiting_on_the_model_never_starve_their_tools() -> None:
    backend = ToolThenAnswer([])
    plan = orla.compile(tool_flow, backends=[backend.spec],
                        mapping={"light": "scripted/any-model"})

    async def crowd() -> list[orla.RunResult]:
        async with orla.BackendPool(plan.backends, clients={"scripted": backend},
                                    body_threads=2, tool_threads=1) as pool:
            runs = [orla.arun(plan, pool=pool, question=f"q{i}") for i in range(8)]
            return list(await asyncio.wait_for(asyncio.gather(*runs), timeout=30))

    results = asyncio.run(crowd())
    assert all(r.ok and r.output == "done" for r in results)


def test_virtual_clock_simulators_of_one_pool_share_their_clock() -> None:
    plan = orla.compile(two_steps, backends=[
        orla.backends.simulator("a", "qwen3-4b", clock="virtual"),
        orla.backends.simulator("b", "qwen3-8b", clock="virtual")],
        mapping={"light": "a/qwen3-4b"})

    async def go() -> tuple[bool, orla.RunResult]:
        async with orla.BackendPool(plan.backends) as pool:
            a, b = pool["a"].client, pool["b"].client
            shared = getattr(a, "clock", None) is getattr(b, "clock", None) is not None
            return shared, await orla.arun(plan, pool=pool, problem=PROBLEM)

    shared, result = asyncio.run(go())
    assert shared and result.ok
    assert result.stage("second_step").cached_tokens > 0  # the span kept its prefix


def test_a_pool_can_be_opened_again() -> None:
    backend = ToolThenAnswer([])
    plan = orla.compile(tool_flow, backends=[backend.spec],
                        mapping={"light": "scripted/any-model"})
    pool = orla.BackendPool(plan.backends, clients={"scripted": backend})

    async def twice() -> list[orla.RunResult]:
        results = []
        for _ in range(2):
            async with pool:
                results.append(await orla.arun(plan, pool=pool, question="q"))
        return results

    assert [r.ok for r in asyncio.run(twice())] == [True, True]


@orla.stage(model="light")
def shout(text: str) -> str:
    return text.upper()


@orla.stage(model="light")
def pair(first: str, second: str) -> str:
    return f"{first}+{second}"


@orla.workflow
def shout_both(x: str, y: str) -> str:
    loud_x = shout(x)
    shout(y)
    return pair(loud_x, y)


def test_a_plan_edited_in_place_between_runs_runs_as_edited() -> None:
    """What a run keeps of a plan's graph (its layout) is made again after an edit: the
    edited node waits for its new dependency instead of reading it before it exists."""
    plan = orla.compile(shout_both, backends=[orla.backends.simulator("sim", clock="virtual")],
                        mapping={"light": "sim/qwen3-8b"})
    by_label = {node.label: node for node in plan.nodes}
    assert by_label["pair"].args[1] == {"$ref": by_label["y"].id}
    shout_y = next(node for node in plan.nodes
                   if node.kind == "stage" and node.args == [{"$ref": by_label["y"].id}])

    async def run() -> orla.RunResult:
        async with orla.BackendPool(plan.backends) as pool:
            return await orla.arun(plan, pool=pool, x="a", y="b")

    assert asyncio.run(run()).output == "A+b"
    by_label["pair"].args[1] = {"$ref": shout_y.id}  # in place: the list object stays the same
    assert asyncio.run(run()).output == "A+B"


@pytest.mark.parametrize(("cut", "closed"), [
    ('{"answer": "It shipped on Mon', {"answer": "It shipped on Mon"}),
    ('{"answer": "say \\"hi', {"answer": 'say "hi'}),
    ('{"answer": "a\\', {"answer": "a"}),
    ('{"tool": "lookup_order", "arguments": {"order_id": "12', {
        "tool": "lookup_order", "arguments": {"order_id": "12"}}),
    ('{"answer": ["a", "b",', {"answer": ["a", "b"]}),
    ('{"answer": "brace { [ inside', {"answer": "brace { [ inside"}),
])
def test_json_cut_off_by_max_tokens_is_closed(cut: str, closed: dict[str, Any]) -> None:
    assert json.loads(close_cut_json(cut)) == closed


class CutOff(Scripted):
    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        return ChatResult(content='{"answer": "It shipped on Mon', tool_calls=[],
                          finish_reason="length", prompt_tokens=10, completion_tokens=8,
                          cached_tokens=0, ttft_s=0.01, duration_s=0.02)


def test_an_emulated_answer_cut_by_max_tokens_reads_as_a_shorter_answer() -> None:
    backend = CutOff([])
    plan = orla.compile(tool_flow, backends=[backend.spec],
                        mapping={"light": "scripted/any-model"})

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, clients={"scripted": backend}) as pool:
            return await orla.arun(plan, pool=pool, question="Where is order 7?")

    result = asyncio.run(go())
    assert result.ok and result.output == "It shipped on Mon"
    assert len(backend.requests) == 1  # no retry


def test_tuning_the_collector_for_serving_freezes_start_up_and_collects_less_often(
        ) -> None:
    threshold = gc.get_threshold()
    try:
        orla.runtime.tune_gc_for_serving()
        assert gc.get_freeze_count() > 0
        middle = 100 if sys.version_info < (3, 14) else threshold[1]
        assert gc.get_threshold() == (100_000, middle, threshold[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
