"""Tool calls a model makes: checked arguments, deadlines that hung tools cannot turn
into a stalled pool, a tool's exit contained to its call, long results cut."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable

import orla_sdk as orla
from orla_sdk.backends.base import ChatRequest, ChatResult, ToolCall
from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.ir import BackendSpec, Capabilities
from orla_sdk.runtime.tool_calls import MAX_RESULT_CHARS, ToolRunner
from orla_sdk.tools import tool_spec

RELEASE = threading.Event()


def add(a: int, b: int) -> int:
    return a + b


def hang() -> str:
    RELEASE.wait(30)
    return "late"


def leave() -> str:
    sys.exit(3)


def flood() -> str:
    return "x" * (MAX_RESULT_CHARS * 2)


async def slow_async() -> str:
    await asyncio.sleep(30)
    return "late"


async def leave_async() -> str:
    sys.exit(4)


TOOLS = {f.__name__: f for f in (add, hang, leave, leave_async, flood, slow_async)}


def call(name: str, arguments: str = "{}") -> str:
    return asyncio.run(ToolRunner(TOOLS).run(ToolCall(id="1", name=name, arguments=arguments)))


def test_arguments_are_checked_and_coerced_by_the_signature() -> None:
    assert call("add", '{"a": "2", "b": "3"}') == "5"  # not "23"
    assert "not valid: a: Input should be a valid integer" in call("add", '{"a": "two", "b": 1}')
    assert "b: Field required" in call("add", '{"a": 1}')
    assert "c: Extra inputs are not permitted" in call("add", '{"a": 1, "b": 2, "c": 3}')
    assert "not JSON" in call("add", "{oops")


def test_a_hung_tool_is_abandoned_and_frees_its_place() -> None:
    async def scenario() -> list[str]:
        runner = ToolRunner(TOOLS, limit=asyncio.Semaphore(1), timeout=0.3)
        hung = [runner.run(ToolCall(id=str(i), name=name, arguments="{}"))
                for i, name in enumerate(["hang", "slow_async", "hang"])]
        add_call = ToolCall(id="9", name="add", arguments='{"a": 1, "b": 1}')
        return list(await asyncio.gather(*hung, runner.run(add_call)))

    started = time.monotonic()
    *abandoned, added = asyncio.run(scenario())
    RELEASE.set()
    assert added == "2"
    assert all("did not return within 0.3 s and was abandoned" in a for a in abandoned)
    assert time.monotonic() - started < 10


def test_a_tool_that_exits_the_process_only_fails_its_call() -> None:
    assert "leave tried to stop the process (SystemExit)" in call("leave")
    assert "leave_async tried to stop the process (SystemExit)" in call("leave_async")


CHARGES: list[str] = []
CARD_ANSWERS = threading.Event()


def charge(amount: int, idempotency_key: str = "") -> str:
    CHARGES.append(idempotency_key)
    if amount > 100:
        CARD_ANSWERS.wait(30)
    return f"charged {amount}"


def test_a_tool_with_effects_past_its_deadline_is_not_called_again() -> None:
    async def scenario() -> list[str]:
        runner = ToolRunner({"charge": charge}, {"charge": tool_spec(orla.tool(effect=True)(
            charge))}, timeout=0.3, run_id="r")
        big = ToolCall(id="1", name="charge", arguments='{"amount": 500}')
        return [await runner.run(big, "s/g0/t0/c0/charge"),
                await runner.run(big, "s/g0/t1/c0/charge")]

    first, again = asyncio.run(scenario())
    CARD_ANSWERS.set()
    assert CHARGES == ["r:s/g0/t0/c0/charge"]  # one call, with its idempotency key
    assert "may still take effect" in first and again == first


def test_long_results_are_cut_with_a_note_to_the_model() -> None:
    result = call("flood")
    assert len(result) < MAX_RESULT_CHARS + 200
    assert result.endswith(f"cut this tool result at {MAX_RESULT_CHARS} of "
                           f"{MAX_RESULT_CHARS * 2} characters]")


class Insistent:
    """A model that calls a tool on every turn, even after its tools are withdrawn."""

    def __init__(self) -> None:
        self.spec = BackendSpec(name="insistent", kind="openai", url="http://127.0.0.1:9/v1",
                                capabilities=Capabilities(tool_calling=True))
        self.requests = 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests += 1
        return ChatResult(content="", tool_calls=[ToolCall(id="t", name="add",
                                                           arguments='{"a": 1, "b": 2}')],
                          finish_reason="tool_calls", prompt_tokens=5, completion_tokens=5,
                          cached_tokens=0, ttft_s=0.0, duration_s=0.0)

    async def aclose(self) -> None:
        pass


@orla.stage(model="m", tools=[add])
def sums(question: str) -> str:
    return orla.generate(question, max_turns=1, max_retries=1)


@orla.workflow
def ask(question: str) -> str:
    return sums(question)


def test_a_model_that_keeps_calling_withdrawn_tools_fails_the_stage_clearly() -> None:
    model = Insistent()
    plan = orla.compile(ask, backends=[model.spec], mapping={"m": "insistent/m"})

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, clients={"insistent": model}) as pool:
            return await orla.arun(plan, pool=pool, question="1+2?")

    result = asyncio.run(go())
    assert not result.ok and model.requests == 3  # one tool turn, then two refusals
    assert "stage 'sums': the model's answer is still not valid after 1 retries" in str(
        result.error)
    assert "no more tool calls are allowed" in str(result.error)


def watched_sleep(clock: VirtualClock, seen: list[float]) -> Callable[[], str]:
    """Work that sleeps 0.2 s of real time, which the loop cannot see, noting ``clock``'s
    time before and after in ``seen``."""
    def slow_lookup() -> str:
        seen.append(clock.now())
        time.sleep(0.2)
        seen.append(clock.now())
        return "found"
    return slow_lookup


async def tick_until(clock: VirtualClock, until: float) -> None:
    """Keep ``clock`` busy: a sleep of 10 simulated ms after another, up to ``until``."""
    while clock.now() < until:
        await clock.sleep_until(clock.now() + 0.01)


def test_a_tool_on_a_thread_takes_no_simulated_time() -> None:
    clock, seen = VirtualClock(), []

    async def scenario() -> str:
        runner = ToolRunner({"slow_lookup": watched_sleep(clock, seen)}, clock=clock)
        result, _ = await asyncio.gather(
            runner.run(ToolCall(id="1", name="slow_lookup", arguments="{}")),
            tick_until(clock, until=1_000.0))
        return result

    assert asyncio.run(scenario()) == "found"
    started, ended = seen
    assert started == ended < 1_000.0  # the clock stood still while the tool ran
    assert clock.now() >= 1_000.0  # and went on once it was over


def summarize_with_the_model(topic: str) -> str:
    return orla.generate(f"Say something about {topic}.", max_tokens=5)


@orla.stage(model="m", tools=[summarize_with_the_model])
def research(topic: str) -> str:
    return orla.generate(f"Research {topic} with your tool.", max_tokens=200)


@orla.workflow
def researched(topic: str = "tides") -> str:
    return research(topic)


def test_a_tool_that_calls_the_model_from_its_thread_lets_the_virtual_clock_go_on() -> None:
    plan = orla.compile(researched, backends=[orla.backends.simulator("sim", clock="virtual")],
                        mapping={"m": "sim/qwen3-8b"})

    async def scenario() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, tool_timeout=10) as pool:
            return await orla.arun(plan, pool=pool)

    started = time.monotonic()
    result = asyncio.run(scenario())
    assert result.ok and result.stages[0].tool_calls == 1
    assert len(result.stages[0].calls) == 3  # the stage's two turns and the tool's own call
    assert time.monotonic() - started < 8  # not a tool past its deadline
