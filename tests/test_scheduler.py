"""The backend queue: per-stage sub-queues, stage and request policies, custom policies,
rerouting past a queue bound; and the order an engine sees under each policy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import orla_sdk as orla
from orla_sdk.agents import AgentKey, AgentLayer, AgentPolicy, Queued
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.engine import LocalEngine
from orla_sdk.ir import BackendSpec, Capabilities, Scheduling
from orla_sdk.runtime.scheduler import BackendQueue, load_policy

MODEL = orla.backends.DEFAULT_LOCAL_MODEL


class LongestPromptFirst(orla.Policy):
    def key(self, waiting: orla.runtime.Waiting) -> tuple[int, int]:
        return (-waiting.prompt_length, waiting.seq)


async def served_order(queue: BackendQueue, requests: list[dict[str, Any]]) -> list[str]:
    """One request holds the only turn while ``requests`` arrive in order; returns the
    order they are served in."""
    served: list[str] = []

    async def request(name: str, **fields: Any) -> None:
        async with queue.turn(**fields):
            served.append(name)
            await asyncio.sleep(0.005)

    holder = asyncio.create_task(request("holder"))
    await asyncio.sleep(0)
    waiters = []
    for fields in requests:
        waiters.append(asyncio.create_task(request(**fields)))
        await asyncio.sleep(0)  # arrival order is creation order
    await asyncio.gather(holder, *waiters)
    return served[1:]


REQUESTS = [
    {"name": "a-long", "stage": "a", "prompt_length": 900, "priority": 10},
    {"name": "b-short", "stage": "b", "prompt_length": 100, "priority": 50},
    {"name": "a-short", "stage": "a", "prompt_length": 50, "priority": 90},
    {"name": "b-mid", "stage": "b", "prompt_length": 400, "priority": 20},
]


@pytest.mark.parametrize(("stage_policy", "request_policy", "expected"), [
    ("fcfs", "fcfs", ["a-long", "b-short", "a-short", "b-mid"]),
    ("priority", "priority", ["a-short", "b-short", "b-mid", "a-long"]),
    ("sjf", "sjf", ["a-short", "b-short", "b-mid", "a-long"]),
    # the stage policy compares heads only: "a" is served in arrival order inside
    ("sjf", "fcfs", ["b-short", "b-mid", "a-long", "a-short"]),
    # heads are compared by their own arrival: b-short came before a-short
    ("fcfs", "sjf", ["b-short", "a-short", "a-long", "b-mid"]),
])
def test_stage_and_request_policies(stage_policy: str, request_policy: str,
                                    expected: list[str]) -> None:
    queue = BackendQueue("b", 1, stage_policy=load_policy(stage_policy),
                         request_policy=load_policy(request_policy))
    assert asyncio.run(served_order(queue, REQUESTS)) == expected


def test_a_stage_can_have_its_own_request_policy_and_a_custom_one_loads_by_reference() -> None:
    scheduling = Scheduling(limit=1, stage_policy="fcfs", request_policy="fcfs",
                            stage_policies={"a": f"{__name__}:LongestPromptFirst"})
    queue = BackendQueue.from_scheduling("b", scheduling, default_limit=8)
    assert queue.limit == 1
    requests = [*REQUESTS, {"name": "a-mid", "stage": "a", "prompt_length": 500}]
    assert asyncio.run(served_order(queue, requests)) == [
        "a-long", "b-short", "b-mid", "a-mid", "a-short"]


class ReviewerFirst(AgentPolicy):
    """Orders the calls of one agent, the reviewer, before all others; leaves the rest."""

    name = "reviewer-first"

    def queue_key(self, waiting: Queued) -> Any:
        agent = waiting.agent.agent if waiting.agent else ""
        return (waiting.seq,) if agent == "reviewer" else None


def test_an_agent_policy_orders_the_calls_it_keys_before_the_backends_policies() -> None:
    layer = AgentLayer([ReviewerFirst()])
    queue = BackendQueue("b", 1, stage_policy=load_policy("priority"),
                         request_policy=load_policy("priority"), agents=layer)
    requests = [{**r, "agent": AgentKey("w", "reviewer" if r["name"].endswith("mid") else
                                        "coder", "r")} for r in REQUESTS]
    # the reviewer's b-mid first; the others by priority, as without the layer
    assert asyncio.run(served_order(queue, requests)) == [
        "b-mid", "a-short", "b-short", "a-long"]


def test_unknown_policies_are_named() -> None:
    with pytest.raises(orla.OrlaError, match="unknown scheduling policy 'shortest'"):
        load_policy("shortest")
    with pytest.raises(orla.OrlaError, match=r"not a subclass of orla\.Policy"):
        load_policy("orla_sdk.ir:Plan")


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> tuple[list[str], int]:
        queue = BackendQueue("b", 1)
        served: list[str] = []

        async def request(name: str) -> None:
            async with queue.turn():
                served.append(name)
                await asyncio.sleep(0.01)

        holder = asyncio.create_task(request("holder"))
        await asyncio.sleep(0)
        gone, stays = asyncio.create_task(request("gone")), asyncio.create_task(request("stays"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(holder, stays, return_exceptions=True)
        return served, queue.waiting + queue.running

    assert asyncio.run(scenario()) == (["holder", "stays"], 0)


# ---- rerouting ------------------------------------------------------------------------------
class Slow:
    """A backend that takes a while to answer and counts what it served."""

    def __init__(self, name: str) -> None:
        self.spec = BackendSpec(name=name, kind="openai", url="http://127.0.0.1:9/v1",
                                capabilities=Capabilities(tool_calling=False),
                                scheduling=Scheduling(limit=1, queue_bound=1))
        self.served = 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        await asyncio.sleep(0.05)
        self.served += 1
        return ChatResult(content="ok", tool_calls=[], finish_reason="stop", prompt_tokens=5,
                          completion_tokens=1, cached_tokens=0, ttft_s=0.01, duration_s=0.05)

    async def aclose(self) -> None:
        return None


@orla.stage(model="light", alternatives=["heavy"])
async def answer_fast(question: str) -> str:
    return await orla.agenerate(question)


@orla.workflow
def quick(question: str) -> str:
    return answer_fast(question)


def test_stages_with_alternatives_leave_a_queue_past_its_bound() -> None:
    edge, datacenter = Slow("edge"), Slow("datacenter")
    plan = orla.compile(quick, backends=[edge.spec, datacenter.spec],
                        mapping={"light": "edge/small", "heavy": "datacenter/large"})

    async def burst() -> list[orla.RunResult]:
        async with orla.BackendPool(plan.backends, clients={
                "edge": edge, "datacenter": datacenter}) as pool:
            return list(await asyncio.gather(
                *(orla.arun(plan, pool=pool, question=f"q{i}") for i in range(6))))

    results = asyncio.run(burst())
    assert all(r.ok for r in results)
    rerouted = [r.stage("answer_fast") for r in results if r.stage("answer_fast").rerouted_to]
    assert rerouted and all(s.backend == "datacenter" and s.rerouted_to == "heavy"
                            for s in rerouted)
    assert edge.served >= 2 and datacenter.served == len(rerouted)
    assert edge.served + datacenter.served == 6


def test_an_alternative_must_be_mapped() -> None:
    with pytest.raises(orla.PlanValidationError, match="alternative 'heavy' is not mapped"):
        orla.compile(quick, backends=[Slow("edge").spec], mapping={"light": "edge/small"})


# ---- the order the real engine serves -------------------------------------------------------
@orla.stage(model="light")
async def one_call(text: str) -> str:
    return await orla.agenerate(text, max_tokens=12, temperature=0)


@orla.workflow
def single(text: str) -> str:
    return one_call(text)


@pytest.mark.parametrize(("policy", "expect_sorted"), [("fcfs", False), ("sjf", True)])
def test_the_engine_serves_waiting_requests_in_policy_order(
        llama_engine: LocalEngine, policy: str, expect_sorted: bool) -> None:
    backend = orla.backends.llamacpp("local", url=llama_engine.url).model_copy(
        update={"scheduling": Scheduling(limit=1, stage_policy=policy, request_policy=policy)})
    plan = orla.compile(single, backends=[backend], mapping={"light": f"local/{MODEL}"})
    lengths = [30, 400, 10, 200, 60]
    finished: list[int] = []

    async def go() -> list[orla.RunResult]:
        async with orla.BackendPool(plan.backends) as pool:
            def on_event(event: orla.runtime.RunEvent) -> None:
                if event.kind == "call":
                    finished.append(lengths[runs.index(event.run_id)])

            runs = [f"run{i}" for i in range(len(lengths))]
            tasks = []
            for run_id, n in zip(runs, lengths, strict=True):
                tasks.append(asyncio.create_task(orla.arun(
                    plan, pool=pool, run_id=run_id, on_event=on_event, text="word " * n)))
                await asyncio.sleep(0)
            return list(await asyncio.gather(*tasks))

    assert all(r.ok for r in asyncio.run(go()))
    waited = finished[1:]  # the first arrival finds the engine free
    assert waited == (sorted(waited) if expect_sorted else lengths[1:])


def test_a_waiter_cancelled_just_before_its_turn_is_skipped() -> None:
    async def scenario() -> tuple[list[str], int]:
        queue = BackendQueue("b", 1)
        served: list[str] = []
        release = asyncio.Event()

        async def request(name: str) -> None:
            async with queue.turn():
                served.append(name)
                if name == "holder":
                    await release.wait()

        holder = asyncio.create_task(request("holder"))
        await asyncio.sleep(0)
        gone, stays = asyncio.create_task(request("gone")), asyncio.create_task(request("stays"))
        await asyncio.sleep(0)
        release.set()  # the holder wakes first and releases its turn ...
        gone.cancel()  # ... while this waiter's future is cancelled but its task not yet run
        await asyncio.wait_for(asyncio.gather(holder, stays, gone, return_exceptions=True), 5)
        return served, queue.waiting + queue.running

    assert asyncio.run(scenario()) == (["holder", "stays"], 0)
