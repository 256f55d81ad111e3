"""Replay a multi-agent trace (``orla_sdk.agents.trace``) on the simulator under chosen
agent policies, cache budgets and concurrency (``docs/agents.md``, "Replaying a trace").

Two measurements, both from the same prompts:

- ``cache_replay``: the calls in one fixed order (``concurrency`` sessions in flight, one
  call of each in turn, a new session taking a finished one's place), through the
  simulator's paged prefix cache alone. The order is the same under every policy, so
  Belady's MIN (the clairvoyant bound) is exact; hit rates are token-weighted.
- ``engine_replay``: the sessions closed-loop on a ``SimEngine`` on a virtual clock
  (each session's next call sent when its last one finished), for time to first token,
  throughput and the hit rate the engine counted. Its order depends on timing, so MIN,
  which needs the order in advance, is measured by ``cache_replay`` only.

A trace's ``segments`` become text: each segment id seeds a stream of filler words,
so equal ids give equal text and a shorter segment is a prefix of a longer one; the
first segment is the system message and the rest one user message.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import statistics
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from orla_sdk.agents import (
    AgentEvent,
    AgentKey,
    AgentLayer,
    AgentPolicy,
    StepsToNext,
    TraceCall,
    policy_by_name,
)
from orla_sdk.agents.blocks import ScoredOrder
from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.sim.cache import IdleOrder, PrefixCache
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.replies import filler, stable_seed
from orla_sdk.backends.sim.tokens import render_prompt

POLICIES = ("lru", "cachesage", "kvflow", "min")
BLOCK_TOKENS = 16


# ---- prompts ---------------------------------------------------------------------------
def messages_of(call: TraceCall) -> list[dict[str, Any]]:
    """The call's chat messages: as recorded, or made from its segments."""
    if call.messages is not None:
        return call.messages
    assert call.segments is not None
    texts = [filler(random.Random(stable_seed(sid)), n) if n else "" for sid, n in call.segments]
    return [{"role": "system", "content": texts[0] if texts else ""},
            {"role": "user", "content": "\n".join(texts[1:])}]


@dataclass
class Workload:
    """A trace ready to replay: its sessions (call indices in step order), each call's
    agent key and prompt blocks, and when each agent of a session calls next."""

    calls: list[TraceCall]
    sessions: list[list[int]]
    keys: list[AgentKey]
    blocks: list[list[bytes]]
    prompt_tokens: list[int]
    agent_steps: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    run_agents: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for run, agent in self.agent_steps:
            self.run_agents.setdefault(run, []).append(agent)

    @classmethod
    def of(cls, calls: Sequence[TraceCall]) -> Workload:
        calls = list(calls)
        by_session: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            by_session.setdefault(call.session, []).append(i)
        sessions = [sorted(group, key=lambda i: calls[i].step) for group in by_session.values()]
        keys: list[AgentKey] = [AgentKey("", "")] * len(calls)
        agent_steps: dict[tuple[str, str], list[int]] = {}
        for group in sessions:
            for position, i in enumerate(group):
                call = calls[i]
                keys[i] = AgentKey(call.workload, call.agent, call.session, position)
                agent_steps.setdefault((call.session, call.agent), []).append(position)
        cache = PrefixCache(BLOCK_TOKENS, BLOCK_TOKENS)
        tokens = [render_prompt(messages_of(call)) for call in calls]
        return cls(calls, sessions, keys, [cache.keys(t, None) for t in tokens],
                   [len(t) for t in tokens], agent_steps)

    def steps_to_next(self, key: AgentKey, position: int) -> int | None:
        """Steps from ``position`` of ``key.run`` until ``key.agent`` calls again."""
        steps = self.agent_steps.get((key.run, key.agent), [])
        later = bisect_right(steps, position)
        return steps[later] - position if later < len(steps) else None

    def agents_of(self, run: str) -> list[str]:
        return self.run_agents.get(run, [])

    def working_set(self, concurrency: int) -> int:
        """Tokens: ``concurrency`` times a mean session's distinct prompt blocks."""
        distinct = [len({b for i in group for b in self.blocks[i]}) for group in self.sessions]
        return int(statistics.fmean(distinct) * min(concurrency, len(distinct))
                   * BLOCK_TOKENS)


def interleave(sessions: Sequence[Sequence[int]], concurrency: int) -> Iterator[int]:
    """Calls in the fixed order: ``concurrency`` sessions in flight, one call each in turn."""
    waiting = iter(sessions)
    live: list[Iterator[int]] = [iter(s) for s in _take(waiting, concurrency)]
    while live:
        for stream in list(live):
            call = next(stream, None)
            if call is None:
                live.remove(stream)
                live.extend(iter(s) for s in _take(waiting, 1))
            else:
                yield call


def _take(it: Iterator[Sequence[int]], n: int) -> list[Sequence[int]]:
    return [s for _, s in zip(range(n), it, strict=False)]


# ---- policies --------------------------------------------------------------------------
@dataclass
class Progress:
    """Where each session is: the position of its latest call."""

    position: dict[str, int] = field(default_factory=dict)

    def at(self, run: str) -> int:
        return self.position.get(run, -1)


def make_policy(name: str, workload: Workload, progress: Progress) -> AgentPolicy:
    if name == "kvflow":  # told the future by the trace
        return StepsToNext(lambda key: workload.steps_to_next(key, progress.at(key.run)),
                           agents=lambda key: workload.agents_of(key.run))
    if name not in POLICIES or name == "min":
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return policy_by_name(name)


class FutureOrder:
    """Belady's MIN at block level: evict the idle block whose next use is farthest."""

    def __init__(self, uses: dict[bytes, list[int]], clock: Callable[[], int]) -> None:
        self.uses, self.clock = uses, clock
        self._heap: list[tuple[float, int, bytes]] = []
        self._idle: dict[bytes, int] = {}
        self._count = 0

    def next_use(self, key: bytes) -> float:
        uses = self.uses.get(key, [])
        later = bisect_right(uses, self.clock())
        return uses[later] if later < len(uses) else float("inf")

    def add(self, key: bytes, owner: Hashable) -> None:
        self._count += 1
        self._idle[key] = self._count
        heapq.heappush(self._heap, (-self.next_use(key), self._count, key))

    def remove(self, key: bytes) -> None:
        self._idle.pop(key, None)

    def victim(self) -> bytes:
        while self._heap:
            _, stamp, key = self._heap[0]
            if self._idle.get(key) == stamp:
                return key
            heapq.heappop(self._heap)
        raise LookupError("no idle block")

    def __contains__(self, key: object) -> bool:
        return key in self._idle

    def __len__(self) -> int:
        return len(self._idle)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._idle))


# ---- the fixed-order cache replay -------------------------------------------------------
@dataclass
class CacheResult:
    policy: str
    capacity_tokens: int
    concurrency: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefetched_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / max(self.prompt_tokens, 1)

    @property
    def missed_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


def cache_replay(workload: Workload, policy: str, capacity_tokens: int, concurrency: int,
                 *, prefetch: bool = True) -> CacheResult:
    """Hit rate of ``policy`` on the fixed order; ``concurrency`` calls hold their blocks
    at once (the oldest is released when another starts)."""
    order = list(interleave(workload.sessions, concurrency))
    progress, now = Progress(), [0]
    layer, idle = _idle_order(policy, workload, progress, order, now)
    cache = PrefixCache(capacity_tokens, BLOCK_TOKENS, idle)
    result = CacheResult(policy, capacity_tokens, concurrency)
    last_prompt: dict[tuple[str, str], list[bytes]] = {}
    session_of = {workload.keys[group[0]].run: n for n, group in enumerate(workload.sessions)}
    in_flight: list[int] = []
    for position, i in enumerate(order):
        now[0] = position
        key, blocks = workload.keys[i], workload.blocks[i]
        progress.position[key.run] = key.step
        if len(in_flight) >= concurrency:
            _release(cache, workload, in_flight.pop(0))
        owner = AgentKey(key.workload, key.agent, key.run)
        if layer is not None:
            layer.observe(AgentEvent("call_started", key))
        hits = min(cache.cached_prefix(blocks), (workload.prompt_tokens[i] - 1) // BLOCK_TOKENS)
        if not cache.acquire(blocks, len(blocks), None, owner):
            raise ValueError(f"a cache of {capacity_tokens} tokens cannot hold {concurrency} "
                             "calls at once; give it more room")
        cache.mark_computed(blocks)
        in_flight.append(i)
        result.prompt_tokens += workload.prompt_tokens[i]
        result.cached_tokens += hits * BLOCK_TOKENS
        last_prompt[(key.run, key.agent)] = blocks
        if layer is not None:
            if key.step == len(workload.sessions[session_of[key.run]]) - 1:
                layer.observe(AgentEvent("turn", key, data={"ended": True}))
            elif prefetch:
                result.prefetched_tokens += _warm(cache, layer, key, last_prompt)
    return result


def _idle_order(policy: str, workload: Workload, progress: Progress, order: list[int],
                now: list[int]) -> tuple[AgentLayer | None, IdleOrder]:
    if policy == "min":
        uses: dict[bytes, list[int]] = {}
        for position, i in enumerate(order):
            for block in workload.blocks[i]:
                uses.setdefault(block, []).append(position)
        return None, FutureOrder(uses, lambda: now[0])
    layer = AgentLayer([make_policy(policy, workload, progress)])
    return layer, ScoredOrder(layer)


def _release(cache: PrefixCache, workload: Workload, i: int) -> None:
    blocks = workload.blocks[i]
    cache.release(blocks, blocks, len(blocks), None)


def _warm(cache: PrefixCache, layer: AgentLayer, key: AgentKey,
          last_prompt: dict[tuple[str, str], list[bytes]]) -> int:
    """Bring the predicted agents' last prompts back into the cache; tokens brought."""
    warmed = 0
    for agent in layer.prefetch(key):
        blocks = last_prompt.get((key.run, agent))
        if blocks:
            missing = len(blocks) - cache.cached_prefix(blocks)
            cache.insert_idle(blocks, None, AgentKey(key.workload, agent, key.run))
            warmed += missing * BLOCK_TOKENS
    return warmed


# ---- the timed replay on the simulated engine --------------------------------------------
@dataclass
class EngineResult:
    policy: str
    capacity_tokens: int
    concurrency: int
    ttft_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    calls: int = 0
    warmups: int = 0
    elapsed_s: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / max(self.prompt_tokens, 1)

    @property
    def mean_ttft_s(self) -> float:
        return statistics.fmean(self.ttft_s) if self.ttft_s else 0.0

    @property
    def p90_ttft_s(self) -> float:
        return statistics.quantiles(self.ttft_s, n=10)[-1] if len(self.ttft_s) > 1 else 0.0

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s else 0.0


def engine_replay(workload: Workload, policy: str, capacity_tokens: int, concurrency: int,
                  *, profile: str = "qwen3-8b", prefetch: bool = True) -> EngineResult:
    """Run the sessions closed-loop, ``concurrency`` at a time, on a virtual-clock engine."""
    return asyncio.run(_engine_replay(workload, policy, capacity_tokens, concurrency,
                                      profile, prefetch))


async def _engine_replay(workload: Workload, policy: str, capacity_tokens: int,
                         concurrency: int, profile: str, prefetch: bool) -> EngineResult:
    progress = Progress()
    agent_policy = make_policy(policy, workload, progress)
    engine = SimEngine(profile, capacity_tokens=capacity_tokens, block_tokens=BLOCK_TOKENS,
                       agent_policies=[agent_policy])
    result = EngineResult(policy, capacity_tokens, concurrency)
    waiting = iter(workload.sessions)
    start = engine.clock.now()
    warm_tasks: set[asyncio.Task[Any]] = set()

    async def run_sessions() -> None:
        for session in waiting:
            await _run_session(engine, workload, session, progress, result,
                               warm_tasks if prefetch else None)
            engine.agents.observe(AgentEvent("turn", workload.keys[session[-1]],
                                             data={"ended": True}))

    await asyncio.gather(*(run_sessions() for _ in range(concurrency)))
    result.elapsed_s = engine.clock.now() - start
    for task in warm_tasks:
        task.cancel()
    await engine.aclose()
    return result


async def _run_session(engine: SimEngine, workload: Workload, session: Sequence[int],
                       progress: Progress, result: EngineResult,
                       warm_tasks: set[asyncio.Task[Any]] | None) -> None:
    last_messages: dict[str, list[dict[str, Any]]] = {}
    for i in session:
        call, key = workload.calls[i], workload.keys[i]
        progress.position[key.run] = key.step
        messages = messages_of(call)
        done = await engine.chat(ChatRequest(
            model=engine.profile.name, messages=messages, agent=key,
            params={"max_tokens": max(call.completion_tokens or 1, 2), "ignore_eos": True}))
        result.calls += 1
        if done.ttft_s is not None:  # the simulator times every call's first token
            result.ttft_s.append(done.ttft_s)
        result.prompt_tokens += done.prompt_tokens
        result.cached_tokens += done.cached_tokens
        last_messages[call.agent] = messages
        if warm_tasks is not None:
            for agent in engine.agents.prefetch(key):
                if agent in last_messages:
                    result.warmups += 1
                    task = asyncio.ensure_future(engine.chat(ChatRequest(
                        model=engine.profile.name, messages=last_messages[agent],
                        agent=AgentKey(key.workload, agent, key.run), params={"max_tokens": 1})))
                    warm_tasks.add(task)
                    task.add_done_callback(warm_tasks.discard)
