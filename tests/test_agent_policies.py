"""The agent layer's policies beyond caching: tool-result memoization, fair share,
budgets and tool permissions, and KV pinning across tool waits; each asserted through
the layer's events and the runs' counters, then all of them on one pool."""

from __future__ import annotations

import asyncio
import statistics
from typing import Literal

import pytest

import orla_sdk as orla
from orla_sdk.agents import (
    Admission,
    AgentEvent,
    AgentKey,
    AgentLayer,
    AgentPolicy,
    Budget,
    Cached,
    CacheSage,
    FairShare,
    MemoizeTools,
    PinAcrossTools,
    policy_by_name,
)
from orla_sdk.backends.base import ChatRequest, ToolCall
from orla_sdk.runtime.records import StageRecord
from orla_sdk.runtime.tool_calls import ToolRunner

SIM = orla.backends.simulator("sim", clock="virtual")
ALICE = AgentKey("support", "alice", "run-1")


class Recorder(AgentPolicy):
    name = "recorder"

    def __init__(self) -> None:
        self.events: list[AgentEvent] = []

    def observe(self, event: AgentEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


LOOKUPS: list[str] = []


@orla.tool(pure=True)
def policy_text(topic: Literal["refunds"]) -> str:
    """The support policy on a topic."""
    LOOKUPS.append(topic)
    return f"{topic}: within 30 days"


@orla.tool(ttl=10)
def stock(item: str) -> str:
    LOOKUPS.append(item)
    return f"{item}: 3 left"


def flaky(item: str) -> str:
    LOOKUPS.append(item)
    raise RuntimeError("the warehouse is down")


def runner(layer: AgentLayer, clock: list[float], key: AgentKey = ALICE,
           record: StageRecord | None = None) -> ToolRunner:
    tools = {f.__name__: f for f in (policy_text, stock, flaky)}
    from orla_sdk.tools import tool_spec

    return ToolRunner(tools, {name: tool_spec(f) for name, f in tools.items()}, layer=layer,
                      agent=key, record=record, now=lambda: clock[0])


def call(name: str, arguments: str) -> ToolCall:
    return ToolCall("1", name, arguments)


# ---- memoization -------------------------------------------------------------------------
def test_a_pure_tool_called_again_with_equal_arguments_is_not_run() -> None:
    LOOKUPS.clear()
    memo, recorder, clock = MemoizeTools("workload"), Recorder(), [0.0]
    layer = AgentLayer([memo, recorder])
    record = StageRecord("answer", "answer")
    first = asyncio.run(runner(layer, clock, record=record).run(
        call("policy_text", '{"topic": "refunds"}')))
    bob = AgentKey("support", "bob", "run-2")  # another agent and run, same workload
    again = asyncio.run(runner(layer, clock, bob, record).run(
        call("policy_text", '{"topic": "refunds"}')))
    assert first == again == "refunds: within 30 days" and LOOKUPS == ["refunds"]
    assert (memo.hits, memo.misses) == (1, 1)
    assert (record.tool_calls, record.tools_reused) == (1, 1)
    assert recorder.kinds() == ["tool_started", "tool_ended", "tool_reused"]


def test_a_ttl_result_expires_and_a_failed_call_is_not_kept() -> None:
    LOOKUPS.clear()
    clock = [0.0]
    layer = AgentLayer([MemoizeTools("run")])
    tools = runner(layer, clock)
    for at in (0.0, 5.0, 11.0):
        clock[0] = at
        layer.observe(AgentEvent("call_queued", ALICE, "sim", {"at": at}))
        asyncio.run(tools.run(call("stock", '{"item": "lamp"}')))
    assert LOOKUPS == ["lamp", "lamp"]  # again at 11 s: the 10 s result had expired
    for _ in range(2):
        asyncio.run(tools.run(call("flaky", '{"item": "lamp"}')))
    assert LOOKUPS[-2:] == ["lamp", "lamp"]  # flaky is not pure, and failures are not kept


def test_run_scope_memos_are_forgotten_when_the_run_ends() -> None:
    memo, clock = MemoizeTools("run"), [0.0]
    layer = AgentLayer([memo])
    asyncio.run(runner(layer, clock).run(call("policy_text", '{"topic": "refunds"}')))
    assert memo.results
    layer.observe(AgentEvent("turn", AgentKey("", "", "run-1"), "", {"ended": True}))
    assert not memo.results


def test_a_tool_with_effects_cannot_be_pure() -> None:
    with pytest.raises(orla.OrlaError, match="cannot be pure"):
        orla.tool(effect=True, pure=True)


# ---- fair share ------------------------------------------------------------------------------
async def light_waits(policies: list[AgentPolicy | str]) -> list[float]:
    """One agent floods a one-at-a-time backend with long calls; three others make short
    ones after it. The simulated seconds each short call waited."""
    spec = SIM.model_copy(update={"scheduling": orla.Scheduling(limit=1)})
    async with orla.BackendPool([spec], policies=policies) as pool:
        async def ask(agent: str, i: int, tokens: int) -> float:
            request = ChatRequest("qwen3-8b", [{"role": "user", "content": f"{agent} {i}"}],
                                  params={"max_tokens": tokens, "ignore_eos": True},
                                  agent=AgentKey("w", agent, f"{agent}-{i}"))
            started = pool.clock.now()
            await pool.call("sim", request, run_id=f"{agent}-{i}")
            return pool.clock.now() - started

        flood = [ask("flood", i, 400) for i in range(12)]
        light = [ask(f"light{j}", i, 20) for j in range(3) for i in range(2)]
        waits = await asyncio.gather(*flood, *light)
    return list(waits[len(flood):])


def test_fair_share_serves_light_agents_before_a_flood() -> None:
    fcfs = asyncio.run(light_waits([]))
    fair = asyncio.run(light_waits([FairShare("agent")]))
    assert statistics.fmean(fair) < 0.5 * statistics.fmean(fcfs)


def test_fair_share_orders_only_the_backends_it_is_given() -> None:
    fair = FairShare("agent", backends=["heavy"])

    class Waiting:
        backend, agent, stage, run_id, priority, critical_path, prompt_length, seq = (
            "light", ALICE, "s", "r", 50, 0, 10, 0)

    assert fair.queue_key(Waiting()) is None
    Waiting.backend = "heavy"
    assert fair.queue_key(Waiting()) == (0.0, 0)


# ---- budgets and tool permissions ---------------------------------------------------------------
@orla.tool
def refund(order_id: str) -> str:
    return f"refunded {order_id}"


@orla.stage(model="m", tools=[policy_text])
def look_up(ticket: str) -> str:
    return orla.generate(f"Which policy applies? {ticket}", max_tokens=60, max_turns=1)


@orla.stage(model="m", tools=[refund])
def act(ticket: str, policy: str) -> str:
    first = orla.generate(f"Resolve: {ticket} ({policy})", max_tokens=60, max_turns=1)
    return first + orla.generate("And the next step?", max_tokens=60)


@orla.workflow
def support(ticket: str) -> str:
    return act(ticket, look_up(ticket))


def run_support(policies: list[AgentPolicy | str]) -> tuple[orla.RunResult, dict[str, str]]:
    """A run, and the policies its pool's layer switched off (with why)."""
    plan = orla.compile(support, backends=[SIM], mapping={"m": "sim/qwen3-8b"})

    async def go() -> tuple[orla.RunResult, dict[str, str]]:
        async with orla.BackendPool(plan.backends, policies=policies) as pool:
            result = await orla.arun(plan, pool=pool, ticket="my lamp broke")
            return result, pool.agents.disabled

    return asyncio.run(go())


def test_a_forbidden_tool_is_refused_to_the_model_and_the_run_goes_on() -> None:
    recorder = Recorder()
    result, _ = run_support([Budget("run", tools=["policy_text"]), recorder])
    assert result.ok and result.stage("act").refused == 2  # once in each of its two asks
    refused = [e for e in recorder.events if e.kind == "refused"]
    assert refused[0].data["tool"] == "refund"
    assert "tool permission: 'refund' is not among the tools allowed (policy_text)" in \
        refused[0].data["rule"]


def test_a_call_past_the_token_budget_fails_the_stage_naming_agent_rule_and_limit() -> None:
    result, _ = run_support([Budget("run", tokens=300)])
    assert not result.ok and result.stage("look_up").status == "done"
    assert "Refused: agent 'act'" in str(result.error)
    assert "token budget" in str(result.error) and "at most 300 per run" in str(result.error)


def test_a_tool_call_budget_counts_calls_per_scope() -> None:
    budget = Budget("agent", tool_calls=1)
    layer = AgentLayer([budget])
    tools = runner(layer, [0.0])
    assert asyncio.run(tools.run(call("stock", '{"item": "a"}'))) == "a: 3 left"
    refused = asyncio.run(tools.run(call("stock", '{"item": "b"}')))
    assert "tool-call budget: 1 of at most 1 tool calls per agent" in refused


def test_budget_needs_limits_by_name() -> None:
    with pytest.raises(orla.OrlaError, match="needs its limits"):
        policy_by_name("budget")


# ---- pinning across tool waits -----------------------------------------------------------------
def test_a_context_waiting_on_a_tool_is_kept_until_its_predicted_return() -> None:
    pin = PinAcrossTools(margin=1.5, first_guess_s=2.0)
    layer = AgentLayer([pin])
    waiting, idle = AgentKey("w", "coder", "r"), AgentKey("w", "critic", "r")
    candidates = [Cached(waiting, age=9, ref="coder"), Cached(idle, age=1, ref="critic")]
    layer.observe(AgentEvent("tool_started", waiting, "", {"tool": "tests", "at": 10.0}))
    assert layer.victim(candidates).ref == "critic"  # the older context is pinned
    layer.observe(AgentEvent("call_queued", idle, "sim", {"at": 12.9}))
    assert layer.victim(candidates).ref == "critic"  # 2 s x 1.5 after 10 s: still pinned
    layer.observe(AgentEvent("call_queued", idle, "sim", {"at": 13.1}))
    assert pin.keep_scores(candidates) is None  # the pin has passed: recency decides
    layer.observe(AgentEvent("tool_ended", waiting, "", {"tool": "tests", "duration_s": 8.0,
                                                           "at": 18.0}))
    assert pin.predicted("coder", "tests") == 8.0


def test_a_pin_ends_when_the_agent_calls_again() -> None:
    pin = PinAcrossTools()
    coder = AgentKey("w", "coder", "r")
    pin.observe(AgentEvent("tool_started", coder, "", {"tool": "tests", "at": 0.0}))
    assert pin.until
    pin.observe(AgentEvent("call_queued", coder, "sim", {"at": 0.5}))
    assert not pin.until


# ---- composition -------------------------------------------------------------------------
def test_pinning_cachesage_memo_fair_share_and_budgets_run_on_one_pool() -> None:
    LOOKUPS.clear()
    memo, fair, sage, recorder = MemoizeTools("workload"), FairShare("run"), CacheSage(), \
        Recorder()
    budget = Budget("run", tools=["policy_text"])
    pin = PinAcrossTools(inner=sage)
    policies: list[AgentPolicy | str] = [pin, memo, fair, budget, recorder]
    runs = [run_support(policies) for _ in range(2)]
    assert all(result.ok and not disabled for result, disabled in runs)
    kinds = recorder.kinds()
    assert "refused" in kinds  # the budget refused `refund`
    assert memo.hits == 1 and LOOKUPS.count("refunds") == 1  # the second run reused it
    assert [r.stage("look_up").tools_reused for r, _ in runs] == [0, 1]
    started = [e for e in recorder.events if e.kind == "call_started"]
    assert all("seq" in e.data for e in started)
    assert not fair.tagged and not fair.charged  # each call's bookkeeping ended with it
    assert sage.models["support"].observations >= 6  # CacheSage saw the calls, through pin
    assert pin.durations  # pinning learned the tools' durations


def test_fair_share_corrects_each_call_by_what_it_was_charged() -> None:
    fair = FairShare("agent")

    class Waiting:
        backend, agent, stage, run_id, priority, critical_path, prompt_length = (
            "sim", ALICE, "s", "run-1", 50, 0, 10)

        def __init__(self, seq: int) -> None:
            self.seq = seq

    tags = [fair.queue_key(Waiting(seq)) for seq in range(3)]
    assert [t[0] for t in tags] == [0.0, 256.0, 512.0]  # each charged the first estimate
    for seq, served in ((0, 4000), (1, 0)):
        fair.observe(AgentEvent("call_started", ALICE, "sim", {"seq": seq}))
        fair.observe(AgentEvent("call_finished", ALICE, "sim",
                                {"seq": seq, "prompt_tokens": served}))
    # 3 x 256 charged, then +3744 and -256 corrected: what was served, and one in flight
    assert fair.finish[("sim", ("", "support", "alice"))] == 4000 + 256
    fair.observe(AgentEvent("turn", AgentKey("", "", "run-1"), "", {"ended": True}))
    assert not fair.tagged and not fair.charged  # the withdrawn third call is forgotten


def test_budgets_hold_the_tokens_of_calls_running() -> None:
    budget = Budget("run", tokens=1000)
    layer = AgentLayer([budget])
    for _ in range(2):
        assert layer.admit(Admission("call", ALICE, "sim", 450)) is None
        layer.observe(AgentEvent("call_queued", ALICE, "sim", {"admitted_tokens": 450}))
    assert "token budget" in str(layer.admit(Admission("call", ALICE, "sim", 450)))
    layer.observe(AgentEvent("call_failed", ALICE, "sim", {"admitted_tokens": 450}))
    layer.observe(AgentEvent("call_finished", ALICE, "sim",
                             {"admitted_tokens": 450, "prompt_tokens": 100}))
    assert budget.used_tokens[("", "support", "run-1")] == 100
    assert layer.admit(Admission("call", ALICE, "sim", 450)) is None
