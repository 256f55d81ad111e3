"""The agent layer's other policies, each against no policy, on the simulator's virtual
clock (simulated seconds; the figures do not depend on this machine's speed).

    python -m benchmarks.agent_policies                 # all three, about 20 s
    python -m benchmarks.agent_policies --only memo     # or fair, pin

- ``memo``: 1,000 support tickets, 64 in flight. Each looks up its category's policy
  (3 categories), the team directory (one answer) and its order's status (an order id the
  simulated model picks among about a hundred), pure tools of 0.3, 0.5 and 0.4 s, with enough tool
  threads that no tool call waits, then answers. With ``MemoizeTools("workload")``
  against without: tool calls run, mean time per ticket and the makespan.
- ``fair``: one agent floods a backend that serves 4 calls at once (200 calls of 600
  tokens) while 5 agents make 20 ordinary calls each (40 tokens). FCFS against
  ``FairShare("agent")``: Jain's fairness index over the tokens each agent was served in
  one window for both (until fair share's light agents are done), the light agents' p50
  and p99 latency, and when the flood is done.
- ``pin``: agents that alternate a model call and a tool call (durations lognormal,
  median 8 s, as test suites and builds take), 6 turns each, with a growing context and,
  after half the turns, a person's review (20 to 60 s, no tool: not a wait to pin), on
  llama.cpp's CPU profile with 4 slots, at 4, 8 and 16 agents in flight, with and without
  slot files (a server started without ``--slot-save-path`` cannot save a lent slot).
  LRU against ``PinAcrossTools``: mean job completion time and the share of prompt
  tokens cached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import orla_sdk as orla
from benchmarks.compile_speed import describe_machine
from orla_sdk.agents import AgentKey, AgentPolicy, FairShare, MemoizeTools, PinAcrossTools
from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.errors import EngineError

DEFAULT_OUT = Path(__file__).parent / "results" / "agent_policies"
CLOCK: list[VirtualClock] = []  # the pool's clock, for the tools' simulated time


async def simulated_wait(seconds: float) -> None:
    clock = CLOCK[-1]
    await clock.sleep_until(clock.now() + seconds)


# ---------------------------------------------------------------------------------
# memo: repeated lookups across tickets
# ---------------------------------------------------------------------------------
@orla.tool(pure=True)
async def lookup_policy(category: Literal["billing", "technical", "general"]) -> str:
    """The support policy of a ticket category."""
    await simulated_wait(0.3)
    return f"the {category} policy"


@orla.tool(pure=True)
async def team_directory() -> str:
    """Which team owns what."""
    await simulated_wait(0.5)
    return "payments: refunds; platform: outages; care: the rest"


@orla.stage(model="m", tools=[lookup_policy])
async def check_policy(ticket: str) -> str:
    return await orla.agenerate(f"Which policy applies? {ticket}", max_tokens=80)


@orla.tool(pure=True)
async def order_status(order_id: int) -> str:
    """Where an order is."""
    await simulated_wait(0.4)
    return f"order {order_id}: shipped"


@orla.stage(model="m", tools=[team_directory])
async def route(ticket: str) -> str:
    return await orla.agenerate(f"Which team owns this? {ticket}", max_tokens=80)


@orla.stage(model="m", tools=[order_status])
async def track(ticket: str) -> str:
    return await orla.agenerate(f"Where is the order of {ticket}?", max_tokens=80)


@orla.stage(model="m")
async def answer(ticket: str, policy: str, team: str, order: str) -> str:
    return await orla.agenerate(f"Answer {ticket} under {policy}, from {team}: {order}.",
                                max_tokens=60)


@orla.workflow
async def ticket_flow(ticket: str) -> str:
    return answer(ticket, check_policy(ticket), route(ticket), track(ticket))


async def run_tickets(policies: list[AgentPolicy | str], tickets: int,
                      in_flight: int) -> dict[str, Any]:
    spec = orla.backends.simulator("sim", clock="virtual")
    plan = orla.compile(ticket_flow, backends=[spec], mapping={"m": "sim/qwen3-8b"})
    gate = asyncio.Semaphore(in_flight)
    async with orla.BackendPool(plan.backends, policies=policies,
                                tool_threads=3 * in_flight) as pool:  # tools never queue
        CLOCK.append(pool.clock)

        async def one(i: int) -> tuple[orla.RunResult, float]:
            async with gate:
                started = pool.clock.now()
                result = await orla.arun(plan, pool=pool, ticket=f"ticket {i}")
                return result, pool.clock.now() - started

        done = await asyncio.gather(*(one(i) for i in range(tickets)))
        makespan = pool.clock.now()
    stages = [s for r, _ in done for s in r.stages]
    return {"ok": sum(r.ok for r, _ in done), "tool_calls": sum(s.tool_calls for s in stages),
            "tools_reused": sum(s.tools_reused for s in stages),
            "mean_s": statistics.fmean(t for _, t in done), "makespan_s": makespan}


def memo(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    base = asyncio.run(run_tickets([], args.tickets, 64))
    memoized = asyncio.run(run_tickets([MemoizeTools("workload")], args.tickets, 64))
    text = (f"memo: {args.tickets} tickets, 64 in flight\n"
            f"  without: {base['tool_calls']} tool calls, mean {base['mean_s']:.2f} s a "
            f"ticket, makespan {base['makespan_s']:.1f} s\n"
            f"  MemoizeTools(workload): {memoized['tool_calls']} tool calls "
            f"({memoized['tools_reused']} answered from memory), mean "
            f"{memoized['mean_s']:.2f} s ({memoized['mean_s'] / base['mean_s']:.2f}x), "
            f"makespan {memoized['makespan_s']:.1f} s "
            f"({memoized['makespan_s'] / base['makespan_s']:.2f}x)")
    return text, {"without": base, "memoize": memoized}


# ---------------------------------------------------------------------------------
# fair: one agent floods a backend
# ---------------------------------------------------------------------------------
async def flood(policies: list[AgentPolicy | str]) -> dict[str, Any]:
    spec = orla.backends.simulator("sim", clock="virtual").model_copy(
        update={"scheduling": orla.Scheduling(limit=4)})
    served: list[tuple[str, float, int]] = []  # (agent, finished at, tokens)
    light_latency: list[float] = []
    async with orla.BackendPool([spec], policies=policies) as pool:
        async def ask(agent: str, i: int, tokens: int) -> None:
            request = ChatRequest("qwen3-8b", [{"role": "user", "content": f"{agent} {i}"}],
                                  params={"max_tokens": tokens, "ignore_eos": True},
                                  agent=AgentKey("w", agent, f"{agent}-{i}"))
            started = pool.clock.now()
            done = await pool.call("sim", request, run_id=f"{agent}-{i}")
            served.append((agent, pool.clock.now(), done.result.prompt_tokens
                           + done.result.completion_tokens))
            if agent != "flood":
                light_latency.append(pool.clock.now() - started)

        async def light(agent: str) -> None:
            for i in range(20):
                await ask(agent, i, 40)

        await asyncio.gather(*(ask("flood", i, 600) for i in range(200)),
                             *(light(f"light{j}") for j in range(5)))
    return {"served": served, "light_p50_s": percentile(light_latency, 50),
            "light_p99_s": percentile(light_latency, 99),
            "light_done_s": max(at for agent, at, _ in served if agent != "flood"),
            "flood_done_s": max(at for agent, at, _ in served if agent == "flood")}


def shares_until(served: list[tuple[str, float, int]], window: float) -> list[float]:
    """The tokens each agent was served by ``window`` seconds."""
    return [float(sum(t for a, at, t in served if a == agent and at <= window))
            for agent in ["flood", *(f"light{j}" for j in range(5))]]


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fair(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    fcfs = asyncio.run(flood([]))
    shared = asyncio.run(flood([FairShare("agent")]))
    window = shared["light_done_s"]  # one window for both: while fair share's light ran
    lines = ["fair: 1 agent floods (200 calls of 600 tokens), 5 make 20 calls of 40, "
             f"4 at once; Jain's index over the tokens served in the first {window:.0f} s"]
    for name, r in (("FCFS", fcfs), ("FairShare(agent)", shared)):
        r["jain"] = jain(shares_until(r.pop("served"), window))
        lines.append(f"  {name}: Jain {r['jain']:.2f}; light agents p50 {r['light_p50_s']:.2f}"
                     f" s, p99 {r['light_p99_s']:.2f} s, done at {r['light_done_s']:.0f} s; "
                     f"the flood done at {r['flood_done_s']:.0f} s")
    lines.append(f"  light p99 ratio {shared['light_p99_s'] / fcfs['light_p99_s']:.3f}x, "
                 f"p50 ratio {shared['light_p50_s'] / fcfs['light_p50_s']:.2f}x, flood "
                 f"{shared['flood_done_s'] / fcfs['flood_done_s']:.2f}x")
    return "\n".join(lines), {"window_s": window, "fcfs": fcfs, "fair_share": shared}


# ---------------------------------------------------------------------------------
# pin: contexts through tool waits
# ---------------------------------------------------------------------------------
TURNS = 6
TOOL_TIMES = random.Random(7)  # reset for each run, so both policies see the same waits


@orla.tool
async def run_tests(target: Literal["unit"]) -> str:
    """Run the test suite."""
    await simulated_wait(TOOL_TIMES.lognormvariate(2.08, 0.6))  # median 8 s
    return "2 failed, 40 passed"


@orla.stage(model="m", tools=[run_tests], agent="coder")
async def code(task: str, seed: int) -> str:
    reviews = random.Random(seed)
    notes = task
    for turn in range(TURNS):
        notes += " " + await orla.agenerate(f"{notes}\nTurn {turn}: fix the next failure.",
                                            max_tokens=40, max_turns=2)
        if reviews.random() < 0.5:
            await simulated_wait(reviews.uniform(20, 60))  # a person reviews the change
    return notes[-80:]


@orla.workflow
async def session(task: str, seed: int) -> str:
    return code(task, seed)


class WithoutSlotFiles(SimEngine):
    """A llama.cpp server started without ``--slot-save-path``: no slot can be saved, so a
    lent slot's context is lost."""

    async def save(self, slot: int, filename: str) -> int:
        raise EngineError("this server has no slot folder")


async def run_sessions(policies: list[AgentPolicy | str], agents: int, slot_files: bool,
                       seed: int) -> dict[str, Any]:
    spec = orla.backends.simulator("sim", "smollm2-135m", clock="virtual")
    plan = orla.compile(session, backends=[spec], mapping={"m": "sim/smollm2-135m"})
    pool = orla.BackendPool(plan.backends, slots=4, policies=policies)
    engine = (SimEngine if slot_files else WithoutSlotFiles)(
        "smollm2-135m", name="sim", clock=pool.clock, max_batch=4, assign_slots=True)
    pool.clients["sim"] = engine
    TOOL_TIMES.seed(seed)
    async with pool:
        CLOCK.append(pool.clock)
        results = await asyncio.gather(*(_timed(pool, orla.arun(
            plan, pool=pool, task=f"task {i}: " + "context " * 300, seed=seed * 1000 + i))
            for i in range(agents)))
    calls = [c for r, _ in results for s in r.stages for c in s.calls]
    prompt = sum(c.prompt_tokens for c in calls)
    return {"ok": sum(r.ok for r, _ in results), "jct_s": statistics.fmean(t for _, t in results),
            "cached": sum(c.cached_tokens for c in calls) / max(1, prompt)}


async def _timed(pool: orla.BackendPool,
                 work: Awaitable[orla.RunResult]) -> tuple[orla.RunResult, float]:
    started = pool.clock.now()
    result = await work
    return result, pool.clock.now() - started


SEEDS = (1, 2, 3)


def pin(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    lines = [f"pin: {TURNS} turns an agent, 4 slots (SmolLM2 on llama.cpp's CPU profile); "
             f"means over seeds {SEEDS}, ratios' range in brackets"]
    data: dict[str, Any] = {}
    for slot_files in (False, True):
        lines.append("  with slot files (lent slots saved and restored)" if slot_files else
                     "  without slot files (a lent slot's context is lost)")
        for agents in (4, 8, 16):
            runs = [(asyncio.run(run_sessions(["lru"], agents, slot_files, seed)),
                     asyncio.run(run_sessions([PinAcrossTools()], agents, slot_files, seed)))
                    for seed in SEEDS]
            data[f"{agents}{'-files' if slot_files else ''}"] = runs
            lines.append(f"    {agents:>2} agents: " + _pin_line(runs))
    return "\n".join(lines), data


def _pin_line(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    ratios = [p["jct_s"] / lru["jct_s"] for lru, p in runs]
    gains = [p["cached"] - lru["cached"] for lru, p in runs]
    lru_jct = statistics.fmean(lru["jct_s"] for lru, _ in runs)
    lru_cached = statistics.fmean(lru["cached"] for lru, _ in runs)
    return (f"LRU JCT {lru_jct:.1f} s, cached {lru_cached:.1%}; PinAcrossTools JCT "
            f"{statistics.fmean(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}], cached "
            f"{statistics.fmean(gains):+.1%} [{min(gains):+.1%}, {max(gains):+.1%}]")


SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[str, dict[str, Any]]]] = {
    "memo": memo, "fair": fair, "pin": pin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--tickets", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    texts, data = [f"machine: {json.dumps(describe_machine())}"], {}
    for name in args.only or list(SECTIONS):
        text, data[name] = SECTIONS[name](args)
        print(text, flush=True)
        texts.append(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text("\n".join(texts) + "\n")
    (args.out / "results.json").write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
