"""The simulated engine: a peer of llama.cpp, vLLM and SGLang, not a mock.

``SimEngine`` serves ``ChatRequest``s the way a continuous-batching engine does, with the
costs of a profile (``profiles``): requests queue (highest priority first, then first
come), up to ``max_batch`` run together, a step prefills prompt chunks within a token
budget and decodes one token for every running sequence, and a paged prefix KV cache of
bounded capacity (``cache``) lets a request skip the prefill of a prefix an earlier
request left behind. Replies (``replies``) are deterministic under the seed. An engine
serves one event loop at a time, on a simulated clock (``clock``).
``docs/simulator.md`` describes the model in full.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from orla_sdk.agents import AgentEvent, AgentKey, AgentLayer, AgentPolicy, fingerprint
from orla_sdk.agents.blocks import ScoredOrder
from orla_sdk.backends.base import ChatRequest, ChatResult, token_limit
from orla_sdk.backends.declare import simulator
from orla_sdk.backends.sim.batch import Batch
from orla_sdk.backends.sim.cache import PrefixCache, SlotAssigner
from orla_sdk.backends.sim.clock import RealClock, SimClock, VirtualClock
from orla_sdk.backends.sim.profiles import SimProfile, get_profile
from orla_sdk.backends.sim.replies import Reply, plan_reply
from orla_sdk.backends.sim.tokens import rendered
from orla_sdk.errors import BackendError


@dataclass(eq=False)
class SimCall:
    """One request inside the engine, with its simulated timeline (seconds)."""

    request: ChatRequest
    prompt: list[str]
    keys: list[bytes]
    reply: Reply
    order: int
    arrival: float
    first_token: asyncio.Future[None]
    done: asyncio.Future[ChatResult]
    owner: AgentKey
    blocks: int = 0
    slot: int | None = None  # the slot it runs in: the one it named, or one assigned to it
    content_keys: list[bytes] = field(default_factory=list)  # its prompt's slot-free keys
    cached_tokens: int = 0
    prefill_left: int = 0  # prompt tokens still to prefill
    prefill_s: float = 0.0
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    finished_at: float = 0.0


METRICS: dict[str, tuple[str, str]] = {
    "prompt_tokens_total": ("counter", "Prompt tokens processed, cached ones excluded"),
    "prompt_tokens_cached_total": ("counter", "Prompt tokens reused from the prefix cache"),
    "prompt_seconds_total": ("counter", "Simulated seconds spent on prefill"),
    "tokens_predicted_total": ("counter", "Generated tokens"),
    "tokens_predicted_seconds_total": ("counter", "Simulated seconds from first to last token"),
    "requests_finished_total": ("counter", "Requests completed"),
    "n_decode_total": ("counter", "Engine steps run"),
    "requests_processing": ("gauge", "Requests running (admitted to the batch)"),
    "requests_deferred": ("gauge", "Requests waiting in the queue"),
    "kv_cache_usage_ratio": ("gauge", "Share of KV blocks referenced by running requests"),
    "kv_cache_tokens": ("gauge", "Tokens held in KV blocks, cached unreferenced ones included"),
    "prefix_cache_tokens": ("gauge", "Tokens in unreferenced cached blocks (evictable)"),
    "sim_time_seconds": ("gauge", "The engine clock, in simulated seconds"),
}
_COUNTERS = [name for name, (kind, _) in METRICS.items() if kind == "counter"]


class SimEngine:
    """A simulated engine that implements the ``Backend`` protocol.

        engine = SimEngine("qwen3-8b", seed=1)
        result = await engine.chat(ChatRequest(model="qwen3-8b", messages=[...]))
        result.ttft_s, result.cached_tokens, await engine.metrics()

    With ``assign_slots`` it imitates llama.cpp's server: ``max_batch`` slots, each
    holding one sequence, and a request that names no slot is given one as llama.cpp
    gives it (``SlotAssigner``); without, such requests share one cache, as on vLLM.

    With ``agent_policies`` the prefix cache evicts in the order the agent layer scores
    (CacheSage and its baselines, as the CacheSage authors' engine patch does): each
    request's blocks belong to its agent (``ChatRequest.agent``, else a fingerprint of its
    prompt), and each request that is not a warm-up (``max_tokens`` <= 1) is an agent's
    turn the policies observe.
    """

    def __init__(self, profile: str | SimProfile = "qwen3-8b", *, name: str = "sim",
                 seed: int = 0, clock: Literal["virtual", "real"] | SimClock = "virtual",
                 capacity_tokens: int | None = None, block_tokens: int = 16,
                 max_batch: int | None = None, assign_slots: bool = False,
                 agent_policies: Sequence[AgentPolicy] = ()) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.seed = seed
        self.clock: SimClock = (VirtualClock() if clock == "virtual" else
                                RealClock() if clock == "real" else clock)
        self.spec = simulator(name, self.profile.name, seed=seed,
                              clock="virtual" if isinstance(self.clock, VirtualClock) else "real")
        self.max_batch = max_batch or self.profile.max_batch
        self.max_step_tokens: float = self.profile.max_step_tokens or math.inf
        self.agents = AgentLayer(agent_policies)
        self.cache = PrefixCache(capacity_tokens or self.profile.capacity_tokens, block_tokens,
                                 ScoredOrder(self.agents) if self.agents else None)
        # llama.cpp: each of max_batch slots keeps its own prefixes, and a request without
        # a slot is given one; otherwise such requests share one cache, as on vLLM
        self.assigner = SlotAssigner(self.max_batch, block_tokens) if assign_slots else None
        self._sequences: dict[int, list[str]] = {}  # slot -> tokens of its last sequence
        self._slot_files: dict[str, list[str]] = {}  # saved slots, by file name
        self._waiting: list[tuple[int, int, SimCall]] = []
        self._running = Batch()
        self._serving: asyncio.Task[None] | None = None
        self._orders = itertools.count()
        self._counters = dict.fromkeys(_COUNTERS, 0.0)

    # -- the Backend protocol --
    async def chat(self, request: ChatRequest) -> ChatResult:
        return await self.submit(request).done

    async def aclose(self) -> None:
        if self._serving is not None and not self._serving.done():
            self._serving.cancel()
        self._abandon("the simulated engine was closed")

    # -- requests --
    def submit(self, request: ChatRequest) -> SimCall:
        """Queue a request; its ``first_token`` and ``done`` futures resolve in
        simulated time. Must be called from the event loop that runs the engine."""
        loop = asyncio.get_running_loop()
        prompt, prompt_json = rendered(request.messages, request.tools)
        reply = plan_reply(request, prompt_json, self.seed, self.profile.output_tokens_median)
        blocks = self.cache.blocks_for(len(prompt) + len(reply.tokens))
        if blocks > self.cache.capacity:
            raise BackendError(self.spec.name, f"a prompt of {len(prompt)} tokens and a reply "
                               f"of {len(reply.tokens)} exceed the KV capacity of "
                               f"{self.cache.capacity * self.cache.block_tokens} tokens",
                               retryable=False)
        call = SimCall(request, prompt, self.cache.keys(prompt, request.slot), reply,
                       next(self._orders), self.clock.now(), loop.create_future(),
                       loop.create_future(), self._owner(request), blocks, slot=request.slot)
        if self.agents:
            step = request.agent.step if request.agent is not None else 0
            self.agents.observe(AgentEvent("call_started", call.owner.at_step(step),
                                           self.spec.name, {"warmup": _is_warmup(request)}))
        heapq.heappush(self._waiting, (-(request.priority or 0), call.order, call))
        if self._serving is None or self._serving.done():
            self._serving = loop.create_task(self._serve())
        return call

    def _owner(self, request: ChatRequest) -> AgentKey:
        """The agent whose blocks the request's are: the declared one, else a fingerprint."""
        key = request.agent
        if key is not None and key.known:
            return AgentKey(key.workload, key.agent, key.run)
        return AgentKey(self.spec.name, fingerprint(request.messages))

    async def _serve(self) -> None:
        try:
            while self._waiting or self._running:
                await self.clock.sleep_until(self.clock.now())  # same-instant arrivals first
                decoding = self._running.decoding()
                held = self._running.held_tokens()
                chunks = self._plan_prefill(self.max_step_tokens - decoding)
                end = self.clock.now() + self._step_seconds(chunks, decoding, held)
                await self.clock.sleep_until(end)
                self._end_step(chunks, end)
        except asyncio.CancelledError:
            self._abandon("the event loop serving the simulated engine stopped")
            raise

    def _plan_prefill(self, budget: float) -> dict[SimCall, int]:
        """Prompt tokens to prefill this step, by request: unfinished prompts first, then
        newly admitted ones, within the step's token budget (chunked prefill)."""
        chunks: dict[SimCall, int] = {}
        for running in self._running.prefilling():
            if budget <= 0:
                break
            chunks[running] = int(min(running.prefill_left, budget))
            budget -= chunks[running]
        while budget > 0 and (admitted := self._admit_next()) is not None:
            chunks[admitted] = int(min(admitted.prefill_left, budget))
            budget -= chunks[admitted]
        return chunks

    def _admit_next(self) -> SimCall | None:
        """Move the head of the queue into the batch, if the batch and the cache have room;
        nobody overtakes a head that waits for room."""
        while self._waiting and len(self._running) < self.max_batch:
            call = self._waiting[0][2]
            if call.done.done():  # the caller gave up while it waited
                heapq.heappop(self._waiting)
                continue
            if not self._reserve(call):
                return None
            heapq.heappop(self._waiting)
            call.admitted_at = self.clock.now()
            self._running.admit(call)
            return call
        return None

    def _reserve(self, call: SimCall) -> bool:
        if self.assigner is not None and call.request.slot is None and not self._assign(call):
            return False
        if call.slot is not None:
            self.cache.keep_in_slot(call.slot, call.keys)
        hits = self.cache.cached_prefix(call.keys) if _reuses_prefix(call.request) else 0
        # at least one prompt token is computed, to produce the first token's logits
        hits = min(hits, (len(call.prompt) - 1) // self.cache.block_tokens)
        if not self.cache.acquire(call.keys, call.blocks, call.slot, call.owner):
            return False
        call.cached_tokens = hits * self.cache.block_tokens
        call.prefill_left = len(call.prompt) - call.cached_tokens
        call.prefill_s = (self.profile.prefill_base_s
                          + self.profile.prefill_per_token_s * call.prefill_left)
        return True

    def _assign(self, call: SimCall) -> bool:
        """Give an unpinned request the slot llama.cpp would; False while none is idle."""
        assert self.assigner is not None
        busy = {running.slot for running in self._running if running.slot is not None}
        call.content_keys = call.content_keys or self.cache.keys(call.prompt, None)
        slot = self.assigner.pick(call.content_keys, call.prompt, busy)
        if slot is None:
            return False
        call.slot, call.keys = slot, self.cache.keys(call.prompt, slot)
        return True

    def _step_seconds(self, chunks: dict[SimCall, int], decoding: int, held: int) -> float:
        """One forward pass over the prompt chunks and the ``decoding`` sequences, which
        hold ``held`` tokens. Its fixed cost (reading the weights) is paid once, the larger
        of the two phases' bases."""
        p = self.profile
        base = max(p.prefill_base_s if chunks else 0.0, p.decode_base_s if decoding else 0.0)
        return (base + p.prefill_per_token_s * sum(chunks.values())
                + p.decode_per_seq_s * decoding + p.decode_per_kv_token_s * held)

    def _end_step(self, chunks: dict[SimCall, int], now: float) -> None:
        self._counters["n_decode_total"] += 1
        for call, tokens in chunks.items():
            call.prefill_left -= tokens
            if call.prefill_left == 0:  # the prompt is in: its first token comes out
                self.cache.mark_computed(call.keys)
                call.first_token_at = now
                self._running.first_token(call, len(call.reply.tokens))
                if not call.first_token.done():
                    call.first_token.set_result(None)
        for call in self._running.finishing():
            self._finish(call, now)

    def _finish(self, call: SimCall, now: float) -> None:
        self._running.remove(call)
        slot = call.slot
        if call.done.done():  # the caller gave up: the reply is neither cached nor counted
            self.cache.release(call.keys, call.keys, call.blocks, slot)
            return
        tokens = call.prompt + call.reply.tokens
        sequence_keys = self.cache.keys(tokens, slot, known=call.keys)
        self.cache.release(call.keys, sequence_keys, call.blocks, slot, call.owner)
        if slot is not None:
            self._hold(slot, tokens)
        call.finished_at = now
        self._count(call)
        if call.request.on_token is not None and call.reply.content:
            call.request.on_token(call.reply.content)  # the simulator streams in one piece
        # an unstreamed reply's first token is not seen, as over HTTP
        ttft = call.first_token_at - call.arrival if call.request.stream else None
        call.done.set_result(ChatResult(
            content=call.reply.content, tool_calls=call.reply.tool_calls,
            finish_reason=call.reply.finish_reason, prompt_tokens=len(call.prompt),
            completion_tokens=len(call.reply.tokens), cached_tokens=call.cached_tokens,
            ttft_s=ttft, duration_s=now - call.arrival))

    def _count(self, call: SimCall) -> None:
        c = self._counters
        c["prompt_tokens_total"] += len(call.prompt) - call.cached_tokens
        c["prompt_tokens_cached_total"] += call.cached_tokens
        c["prompt_seconds_total"] += call.prefill_s
        c["tokens_predicted_total"] += len(call.reply.tokens)
        c["tokens_predicted_seconds_total"] += call.finished_at - call.first_token_at
        c["requests_finished_total"] += 1

    def _abandon(self, why: str) -> None:
        """Fail every queued and running request, giving their blocks back."""
        for call in [entry[2] for entry in self._waiting] + list(self._running):
            if not call.done.done():
                call.done.set_exception(BackendError(self.spec.name, why, retryable=True))
        for call in self._running:
            self.cache.release(call.keys, call.keys, call.blocks, call.slot)
        self._running.clear()
        self._waiting.clear()

    # -- counters and cache controls (the methods of LlamaCppControl, in process) --
    async def metrics(self) -> dict[str, float]:
        """The engine's counters, named as llama.cpp names its own (no prefix)."""
        return self.metrics_now()

    def metrics_now(self) -> dict[str, float]:
        cache = self.cache
        return {**self._counters,
                "requests_processing": float(len(self._running)),
                "requests_deferred": float(len(self._waiting)),
                "kv_cache_usage_ratio": cache.referenced() / max(cache.capacity, 1),
                "kv_cache_tokens": float((cache.capacity - cache.free()) * cache.block_tokens),
                "prefix_cache_tokens": float(cache.cached_idle() * cache.block_tokens),
                "sim_time_seconds": self.clock.now()}

    async def flush(self) -> int:
        """Drop every unreferenced cached block, as SGLang's ``/flush_cache`` and vLLM's
        ``/reset_prefix_cache`` do; blocks of running requests stay. Returns tokens."""
        return self.cache.drop_idle()

    async def reset(self) -> int:
        """``flush`` under the name the memory manager gives a global reset."""
        return self.cache.drop_idle()

    async def usage(self) -> float:
        """The share of KV blocks held, cached idle ones included (vLLM's usage gauge)."""
        cache = self.cache
        return (cache.capacity - cache.free()) / max(cache.capacity, 1)

    async def erase(self, slot: int) -> int:
        """Drop the cached blocks of requests pinned to ``slot``; returns tokens erased."""
        self._sequences.pop(slot, None)
        if self.assigner is not None:
            self.assigner.forget(slot)
        return self.cache.drop_idle(slot, everything=False)

    async def save(self, slot: int, filename: str) -> int:
        """Keep what ``slot`` holds under ``filename`` (in memory), as llama.cpp's slot save
        writes it to its slot folder; returns the tokens saved."""
        tokens = self._sequences.get(slot, [])
        blocks = self.cache.cached_prefix(self.cache.keys(tokens, slot))
        self._slot_files[filename] = tokens[:blocks * self.cache.block_tokens]
        return len(self._slot_files[filename])

    async def restore(self, slot: int, filename: str) -> int:
        """Put a saved sequence back into ``slot`` in place of what it held; returns the
        tokens restored. Restoring costs no simulated time: reading a saved slot is
        milliseconds against the seconds its prefill would take."""
        tokens = self._slot_files.get(filename)
        if tokens is None:
            raise BackendError(self.spec.name, f"no saved slot named {filename!r}",
                               retryable=False)
        if any(call.slot == slot for call in self._running):
            raise BackendError(self.spec.name, f"slot {slot} is busy", retryable=False)
        self.cache.keep_in_slot(slot, [])
        blocks = self.cache.insert_idle(self.cache.keys(tokens, slot), slot)
        self._hold(slot, tokens[:blocks * self.cache.block_tokens])
        return len(self._sequences[slot])

    async def forget(self, filename: str) -> bool:
        """Drop the saved slot ``filename`` (as deleting llama.cpp's file would): the memory
        manager calls it once nothing will restore it. Whether there was one."""
        return self._slot_files.pop(filename, None) is not None

    def saved_slots(self) -> list[str]:
        """The names of the slots saved and not forgotten."""
        return sorted(self._slot_files)

    def _hold(self, slot: int, tokens: list[str]) -> None:
        """``slot`` now holds ``tokens``: what a save writes, what assignment compares."""
        self._sequences[slot] = tokens
        if self.assigner is not None:
            self.assigner.remember(slot, self.cache.keys(tokens, None), tokens)

    async def slots(self) -> list[dict[str, Any]]:
        busy = {call.slot for call in self._running}
        return [{"id": i, "n_ctx": self.cache.capacity * self.cache.block_tokens,
                 "is_processing": i in busy} for i in range(self.max_batch)]

    async def health(self) -> bool:
        return True


def _reuses_prefix(request: ChatRequest) -> bool:
    """False for llama.cpp's ``cache_prompt: false`` (a parameter, or in ``extra_body`` as a
    served client sends it), which computes the whole prompt again."""
    extra = request.params.get("extra_body")
    flag = request.params.get("cache_prompt",
                              extra.get("cache_prompt") if isinstance(extra, dict) else None)
    return flag is not False


def _is_warmup(request: ChatRequest) -> bool:
    """A prefetcher's warm-up: at most one token asked for."""
    limit = token_limit(request)
    return limit is not None and limit <= 1
