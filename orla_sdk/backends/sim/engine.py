"""The simulated engine: a peer of llama.cpp, vLLM and SGLang, not a mock.

``SimEngine`` serves ``ChatRequest``s the way a continuous-batching engine does, with the
costs of a profile (``sim_profiles``): requests queue (highest priority first, then first
come), up to ``max_batch`` run together, a step prefills prompt chunks within a token
budget and decodes one token for every running sequence, and a paged prefix KV cache of
bounded capacity lets a request skip the prefill of a prefix an earlier request left
behind. Replies are deterministic under the seed; JSON-schema requests get JSON of that
schema. An engine serves one event loop at a time.

Time is simulated. With ``clock="virtual"`` nothing sleeps: a clock of its own jumps to
the next event once every other task of the event loop is waiting, so thousands of
concurrent calls finish in seconds. With ``clock="real"`` the engine sleeps for the
simulated durations. ``docs/simulator.md`` describes the model in full.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from orla_sdk.backends.base import ChatRequest, ChatResult, ToolCall
from orla_sdk.errors import BackendError
from orla_sdk.backends.declare import simulator
from orla_sdk.backends.sim.profiles import SimProfile, get_profile

# ---- tokens ----------------------------------------------------------------------------
# A special token, a word piece of up to 6 letters, up to 3 digits, or one other character;
# a single space sticks to the piece after it. Joining the tokens gives the text back.
TOKEN = re.compile(r"<\|\w+\|>| ?[^\W\d_]{1,6}| ?\d{1,3}| ?(?:[^\w\s]|_)|\s")


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text)


def render_prompt(messages: list[dict[str, Any]],
                  tools: list[dict[str, Any]] | None = None) -> list[str]:
    """The chat as one token sequence, in the ChatML layout Qwen3 and SmolLM2 use."""
    parts = [f"<|im_start|>system\n# Tools\n{json.dumps(tools)}<|im_end|>\n"] if tools else []
    parts += [f"<|im_start|>{m.get('role', 'user')}\n{message_text(m)}<|im_end|>\n"
              for m in messages]
    return tokenize("".join(parts) + "<|im_start|>assistant\n")


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content)
    calls = [call.get("function", {}) for call in message.get("tool_calls") or []]
    return str(content) + "".join(tool_call_text(c.get("name", ""), c.get("arguments", "{}"))
                                  for c in calls)


def tool_call_text(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": {json.dumps(name)}, "arguments": {arguments}}}</tool_call>'


# ---- replies ---------------------------------------------------------------------------
FILLER = ("the", "model", "agent", "plan", "step", "cache", "answer", "check", "result",
          "value", "data", "task", "order", "ticket", "policy", "note", "reply", "query")


@dataclass(frozen=True)
class Reply:
    """What the simulated model writes: text or one tool call, and its tokens."""

    content: str
    tool_calls: list[ToolCall]
    tokens: list[str]
    finish_reason: str


def plan_reply(request: ChatRequest, prompt: list[str], seed: int, median: int) -> Reply:
    rng = random.Random(stable_seed(seed, request.params.get("seed"), request.model, prompt,
                                    request.json_schema))
    limit = request.params.get("max_tokens") or request.params.get("max_completion_tokens")
    cap = max(1, int(limit)) if limit else None
    call = _tool_call(request, rng)
    if call is not None:
        text = tool_call_text(call.name, call.arguments)
    elif request.json_schema is not None:
        text = json.dumps(fake_json(request.json_schema, rng))
    else:
        length = max(1, round(rng.lognormvariate(math.log(median), 0.6)))
        text = filler(rng, length if cap is None else min(length, cap + 1))
    tokens = tokenize(text)
    if cap is not None and len(tokens) > cap:
        tokens = tokens[:cap]
        return Reply("".join(tokens), [], tokens, "length")
    if call is not None:
        return Reply("", [call], tokens, "tool_calls")
    return Reply(text, [], tokens, "stop")


def stable_seed(*parts: Any) -> int:
    """A seed from JSON-able parts that is the same in every process (unlike ``hash``)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def filler(rng: random.Random, tokens: int) -> str:
    """Plain text of exactly ``tokens`` tokens: short words, a full stop now and then."""
    words = [rng.choice(FILLER) for _ in range(tokens)]
    for i in range(7, tokens, 8):
        words[i] = "."
    return " ".join(words).replace(" .", ".")


def _tool_call(request: ChatRequest, rng: random.Random) -> ToolCall | None:
    """A call to the chosen tool (the first, unless ``tool_choice`` names one) until a tool
    result follows the last user message; then the model answers."""
    choice = request.params.get("tool_choice", "auto")
    if not request.tools or choice == "none" or _tool_answered(request.messages):
        return None
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    tool = next((t for t in request.tools if t["function"]["name"] == named), request.tools[0])
    schema = tool["function"].get("parameters") or {"type": "object"}
    return ToolCall(id=f"call_{rng.getrandbits(48):012x}", name=tool["function"]["name"],
                    arguments=json.dumps(fake_json(schema, rng)))


def _tool_answered(messages: list[dict[str, Any]]) -> bool:
    for message in reversed(messages):
        if message.get("role") in ("tool", "user"):
            return bool(message.get("role") == "tool")
    return False


def fake_json(schema: dict[str, Any], rng: random.Random,
              root: dict[str, Any] | None = None) -> Any:
    """A value that validates against ``schema`` (``$defs``/``$ref`` as pydantic emits them;
    ``pattern`` and ``multipleOf`` are not honoured)."""
    if isinstance(schema, bool):  # ``true`` accepts anything
        schema = {}
    root = root if root is not None else schema
    if "$ref" in schema:
        return fake_json(_resolve(schema["$ref"], root), rng, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return fake_json(rng.choice(options), rng, root)
    if "allOf" in schema:
        return fake_json({k: v for part in schema["allOf"] for k, v in part.items()}, rng, root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _FAKERS[kind](schema, rng, root)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _fake_object(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    value = {name: fake_json(sub, rng, root) for name, sub in schema.get("properties", {}).items()}
    extra = schema.get("additionalProperties")
    if not value and isinstance(extra, dict):
        value["key"] = fake_json(extra, rng, root)
    return value


def _fake_array(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    if "prefixItems" in schema:
        return [fake_json(item, rng, root) for item in schema["prefixItems"]]
    count = max(schema.get("minItems", 0), min(rng.randint(1, 3), schema.get("maxItems", 3)))
    return [fake_json(schema.get("items", {}), rng, root) for _ in range(count)]


def _fake_string(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    formats = {"date-time": "2025-01-01T00:00:00Z", "date": "2025-01-01", "time": "12:00:00",
               "email": "agent@example.com", "uri": "https://example.com/",
               "uuid": "00000000-0000-4000-8000-000000000000"}
    text = formats.get(schema.get("format", ""), "") or filler(rng, rng.randint(1, 6))
    text = text.ljust(schema.get("minLength", 0), "x")
    return text[:schema["maxLength"]] if "maxLength" in schema else text


def _fake_number(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    whole = schema.get("type") == "integer"
    step = 1 if whole else 0.01
    low = schema.get("minimum", schema.get("exclusiveMinimum", -step) + step)
    high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100 + step) - step)
    if whole:
        return rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
    return min(max(round(rng.uniform(low, high), 2), low), high)


def _fake_boolean(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    return rng.random() < 0.5


def _fake_null(schema: dict[str, Any], rng: random.Random, root: dict[str, Any]) -> Any:
    return None


_FAKERS: dict[str, Callable[[dict[str, Any], random.Random, dict[str, Any]], Any]] = {
    "object": _fake_object, "array": _fake_array, "string": _fake_string,
    "integer": _fake_number, "number": _fake_number, "boolean": _fake_boolean,
    "null": _fake_null,
}


# ---- clocks ----------------------------------------------------------------------------
class SimClock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class RealClock:
    """Seconds since the clock was made; sleeping really sleeps."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._start

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - self.now()))


class VirtualClock:
    """Simulated seconds. Sleepers wait in a timer heap; a driver task wakes the earliest
    one once the event loop has nothing else to run, that is when every caller is waiting
    on the engine (or on this clock). Share one between engines to keep them in step."""

    def __init__(self) -> None:
        self._now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._timers, (max(when, self._now), next(self._order), future))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await future

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        while self._timers:
            await settle()
            when, _, future = heapq.heappop(self._timers)
            if future.get_loop() is loop and not future.done():
                self._now = max(self._now, when)
                future.set_result(None)


SPINS_WITHOUT_READY_QUEUE = 64  # loops that hide their ready queue (uvloop) get this many
MAX_SPINS = 10_000              # a task that yields forever cannot stop the clock


async def settle() -> None:
    """Return once no other callback of this event loop is ready to run."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)  # CPython's ready queue
    for spin in range(MAX_SPINS):
        await asyncio.sleep(0)
        if (ready is None and spin >= SPINS_WITHOUT_READY_QUEUE) or (
                ready is not None and not ready):
            return


# ---- the paged prefix KV cache ---------------------------------------------------------
@dataclass
class _Block:
    refs: int
    slot: int | None
    computed: bool  # False until the step that prefills it ends


class PrefixCache:
    """KV blocks of ``block_tokens`` tokens, at most ``capacity_tokens`` in all.

    A full block is keyed by a hash chain over the tokens up to and including it (vLLM's
    prefix caching), so equal keys mean equal prefixes. Blocks of running requests are
    referenced; a finished request's blocks stay cached, unreferenced, until evicted least
    recently used first. Requests pinned to a slot key their blocks under that slot, so a
    slot sees only its own prefixes (llama.cpp's slots) and can be erased on its own.
    """

    def __init__(self, capacity_tokens: int, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.capacity = capacity_tokens // block_tokens
        self._blocks: dict[bytes, _Block] = {}
        self._idle: OrderedDict[bytes, None] = OrderedDict()  # unreferenced, oldest first
        self._private = 0  # blocks of running requests that hold no full, keyed block
        self._by_slot: dict[int, set[bytes]] = {}  # slot -> keys of its blocks

    def keys(self, tokens: list[str], slot: int | None) -> list[bytes]:
        size = self.block_tokens
        parent = b"" if slot is None else f"slot {slot}".encode()
        keys = []
        for start in range(0, len(tokens) - size + 1, size):
            data = parent + json.dumps(tokens[start:start + size]).encode()
            parent = hashlib.blake2b(data, digest_size=16).digest()
            keys.append(parent)
        return keys

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def cached_prefix(self, keys: list[bytes]) -> int:
        """How many leading blocks of ``keys`` are cached and computed."""
        for i, key in enumerate(keys):
            block = self._blocks.get(key)
            if block is None or not block.computed:
                return i
        return len(keys)

    def mark_computed(self, keys: list[bytes]) -> None:
        for key in keys:
            self._blocks[key].computed = True

    def acquire(self, keys: list[bytes], blocks: int, slot: int | None) -> bool:
        """Reference the prompt's blocks and reserve ``blocks`` in all; False if they do not
        fit even after evicting every unreferenced block."""
        missing = sum(key not in self._blocks for key in keys)
        pinned_idle = sum(key in self._idle for key in keys)
        needed = missing + blocks - len(keys)
        if needed > self.free() + len(self._idle) - pinned_idle:
            return False
        for key in keys:
            if key in self._blocks:
                self._reference(key)
        self._make_room(needed)
        for key in keys:
            if key not in self._blocks:
                self._add(key, _Block(refs=1, slot=slot, computed=False))
        self._private += blocks - len(keys)
        return True

    def release(self, keys: list[bytes], sequence_keys: list[bytes], blocks: int,
                slot: int | None) -> None:
        """Give back a request's blocks; the full blocks of its reply join the cache."""
        private = blocks - len(keys)
        held = list(keys)
        for key in sequence_keys[len(keys):]:
            if private and key not in self._blocks:
                self._add(key, _Block(refs=1, slot=slot, computed=True))
                held.append(key)
                private -= 1
                self._private -= 1
        self._private -= private
        for key in reversed(held):  # the deepest block goes first when evicted
            block = self._blocks[key]
            block.refs -= 1
            if block.refs == 0:
                self._idle[key] = None

    def drop_idle(self, slot: int | None = None, everything: bool = True) -> int:
        """Drop unreferenced blocks (all, or those of ``slot``); returns tokens dropped."""
        doomed = [key for key in (self._idle if everything else self._slot_keys(slot))
                  if key in self._idle]
        for key in doomed:
            self._drop(key)
        return len(doomed) * self.block_tokens

    def keep_in_slot(self, slot: int, keys: list[bytes]) -> None:
        """A llama.cpp slot holds one sequence: when a prompt enters ``slot``, the slot's
        cached blocks off that prompt's prefix are dropped."""
        wanted = set(keys)
        doomed = [key for key in self._slot_keys(slot) if key in self._idle and key not in wanted]
        for key in doomed:
            self._drop(key)

    def insert_idle(self, keys: list[bytes], slot: int) -> int:
        """Cache blocks computed elsewhere (a restored slot file), unreferenced and most
        recently used, the deepest first to go; stops where no room is left. Returns the
        blocks now cached."""
        inserted = []
        for key in keys:
            if key not in self._blocks:
                if self.free() < 1 and not self._idle:
                    break
                self._make_room(1)
                self._add(key, _Block(refs=0, slot=slot, computed=True))
                self._idle[key] = None
            inserted.append(key)
        for key in reversed(inserted):
            if key in self._idle:
                self._idle.move_to_end(key)
        return len(inserted)

    def free(self) -> int:
        return self.capacity - len(self._blocks) - self._private

    def referenced(self) -> int:
        return len(self._blocks) - len(self._idle) + self._private

    def cached_idle(self) -> int:
        return len(self._idle)

    def _add(self, key: bytes, block: _Block) -> None:
        self._blocks[key] = block
        if block.slot is not None:
            self._by_slot.setdefault(block.slot, set()).add(key)

    def _drop(self, key: bytes) -> None:
        """Forget an unreferenced block."""
        del self._idle[key]
        block = self._blocks.pop(key)
        if block.slot is not None:
            self._by_slot[block.slot].discard(key)

    def _slot_keys(self, slot: int | None) -> set[bytes]:
        return self._by_slot.get(slot, set()) if slot is not None else set()

    def _reference(self, key: bytes) -> None:
        self._blocks[key].refs += 1
        self._idle.pop(key, None)

    def _make_room(self, blocks: int) -> None:
        while self.free() < blocks:
            self._drop(next(iter(self._idle)))


SLOT_SIMILARITY = 0.1  # llama.cpp's --slot-prompt-similarity default


class SlotAssigner:
    """llama.cpp's choice of a slot for a request that names none: the idle slot whose
    last sequence shares the longest prefix with the prompt, if that prefix is over
    ``SLOT_SIMILARITY`` of the prompt; else the idle slot used least recently. Prefixes
    are compared block by block through their slot-free keys, then token by token."""

    def __init__(self, count: int, block_tokens: int) -> None:
        self.count = count
        self.block_tokens = block_tokens
        # slot -> its last sequence: slot-free block keys, and tokens
        self.last: dict[int, tuple[list[bytes], list[str]]] = {}
        self.used: dict[int, int] = {}  # slot -> when it was last given out
        self._clock = itertools.count()

    def pick(self, keys: list[bytes], tokens: list[str], busy: set[int]) -> int | None:
        idle = [slot for slot in range(self.count) if slot not in busy]
        if not idle:
            return None
        shared = {slot: self._shared(slot, keys, tokens) for slot in idle}
        best = max(idle, key=lambda slot: shared[slot])
        if shared[best] <= SLOT_SIMILARITY * len(tokens):
            best = min(idle, key=lambda slot: self.used.get(slot, -1))
        self.used[best] = next(self._clock)
        return best

    def _shared(self, slot: int, keys: list[bytes], tokens: list[str]) -> int:
        """Tokens of ``tokens`` that the slot's last sequence starts with."""
        last_keys, last_tokens = self.last.get(slot, ([], []))
        start = _common_prefix(last_keys, keys) * self.block_tokens
        end = start + self.block_tokens
        return start + _common_prefix(last_tokens[start:end], tokens[start:end])

    def remember(self, slot: int, keys: list[bytes], tokens: list[str]) -> None:
        self.last[slot] = (keys, tokens)

    def forget(self, slot: int) -> None:
        self.last.pop(slot, None)


def _common_prefix(a: list[Any], b: list[Any]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


# ---- the engine ------------------------------------------------------------------------
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
    blocks: int = 0
    slot: int | None = None  # the slot it runs in: the one it named, or one assigned to it
    content_keys: list[bytes] = field(default_factory=list)  # its prompt's slot-free keys
    cached_tokens: int = 0
    prefill_left: int = 0  # prompt tokens still to prefill
    generated: int = 0
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
    """

    def __init__(self, profile: str | SimProfile = "qwen3-8b", *, name: str = "sim",
                 seed: int = 0, clock: Literal["virtual", "real"] | SimClock = "virtual",
                 capacity_tokens: int | None = None, block_tokens: int = 16,
                 max_batch: int | None = None, assign_slots: bool = False) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.seed = seed
        self.clock: SimClock = (VirtualClock() if clock == "virtual" else
                                RealClock() if clock == "real" else clock)
        self.spec = simulator(name, self.profile.name, seed=seed,
                              clock="virtual" if isinstance(self.clock, VirtualClock) else "real")
        self.max_batch = max_batch or self.profile.max_batch
        self.max_step_tokens: float = self.profile.max_step_tokens or math.inf
        self.cache = PrefixCache(capacity_tokens or self.profile.capacity_tokens, block_tokens)
        # llama.cpp: each of max_batch slots keeps its own prefixes, and a request without
        # a slot is given one; otherwise such requests share one cache, as on vLLM
        self.assigner = SlotAssigner(self.max_batch, block_tokens) if assign_slots else None
        self._sequences: dict[int, list[str]] = {}  # slot -> tokens of its last sequence
        self._slot_files: dict[str, list[str]] = {}  # saved slots, by file name
        self._waiting: list[tuple[int, int, SimCall]] = []
        self._running: list[SimCall] = []
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
        prompt = render_prompt(request.messages, request.tools)
        reply = plan_reply(request, prompt, self.seed, self.profile.output_tokens_median)
        blocks = self.cache.blocks_for(len(prompt) + len(reply.tokens))
        if blocks > self.cache.capacity:
            raise BackendError(self.spec.name, f"a prompt of {len(prompt)} tokens and a reply "
                               f"of {len(reply.tokens)} exceed the KV capacity of "
                               f"{self.cache.capacity * self.cache.block_tokens} tokens",
                               retryable=False)
        call = SimCall(request, prompt, self.cache.keys(prompt, request.slot), reply,
                       next(self._orders), self.clock.now(), loop.create_future(),
                       loop.create_future(), blocks, slot=request.slot)
        heapq.heappush(self._waiting, (-(request.priority or 0), call.order, call))
        if self._serving is None or self._serving.done():
            self._serving = loop.create_task(self._serve())
        return call

    async def _serve(self) -> None:
        try:
            while self._waiting or self._running:
                await self.clock.sleep_until(self.clock.now())  # same-instant arrivals first
                decoding = [call for call in self._running if call.generated]
                chunks = self._plan_prefill(self.max_step_tokens - len(decoding))
                end = self.clock.now() + self._step_seconds(chunks, decoding)
                await self.clock.sleep_until(end)
                self._end_step(chunks, decoding, end)
        except asyncio.CancelledError:
            self._abandon("the event loop serving the simulated engine stopped")
            raise

    def _plan_prefill(self, budget: float) -> dict[SimCall, int]:
        """Prompt tokens to prefill this step, by request: unfinished prompts first, then
        newly admitted ones, within the step's token budget (chunked prefill)."""
        chunks: dict[SimCall, int] = {}
        for running in self._running:
            if running.prefill_left and budget > 0:
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
            self._running.append(call)
            return call
        return None

    def _reserve(self, call: SimCall) -> bool:
        if self.assigner is not None and call.request.slot is None and not self._assign(call):
            return False
        if call.slot is not None:
            self.cache.keep_in_slot(call.slot, call.keys)
        hits = self.cache.cached_prefix(call.keys)
        # at least one prompt token is computed, to produce the first token's logits
        hits = min(hits, (len(call.prompt) - 1) // self.cache.block_tokens)
        if not self.cache.acquire(call.keys, call.blocks, call.slot):
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

    def _step_seconds(self, chunks: dict[SimCall, int], decoding: list[SimCall]) -> float:
        """One forward pass over the prompt chunks and the running sequences. Its fixed cost
        (reading the weights) is paid once, the larger of the two phases' bases."""
        p = self.profile
        held = sum(len(call.prompt) + call.generated for call in decoding)
        base = max(p.prefill_base_s if chunks else 0.0, p.decode_base_s if decoding else 0.0)
        return (base + p.prefill_per_token_s * sum(chunks.values())
                + p.decode_per_seq_s * len(decoding) + p.decode_per_kv_token_s * held)

    def _end_step(self, chunks: dict[SimCall, int], decoding: list[SimCall],
                  now: float) -> None:
        self._counters["n_decode_total"] += 1
        for call, tokens in chunks.items():
            call.prefill_left -= tokens
            if call.prefill_left == 0:  # the prompt is in: its first token comes out
                self.cache.mark_computed(call.keys)
                call.first_token_at, call.generated = now, 1
                if not call.first_token.done():
                    call.first_token.set_result(None)
        for call in decoding:
            call.generated += 1
        for call in list(self._running):
            if call.done.done() or call.generated >= len(call.reply.tokens):
                self._finish(call, now)

    def _finish(self, call: SimCall, now: float) -> None:
        self._running.remove(call)
        slot = call.slot
        if call.done.done():  # the caller gave up: the reply is neither cached nor counted
            self.cache.release(call.keys, call.keys, call.blocks, slot)
            return
        tokens = call.prompt + call.reply.tokens
        self.cache.release(call.keys, self.cache.keys(tokens, slot), call.blocks, slot)
        if slot is not None:
            self._hold(slot, tokens)
        call.finished_at = now
        self._count(call)
        if call.request.on_token is not None and call.reply.content:
            call.request.on_token(call.reply.content)  # the simulator streams in one piece
        call.done.set_result(ChatResult(
            content=call.reply.content, tool_calls=call.reply.tool_calls,
            finish_reason=call.reply.finish_reason, prompt_tokens=len(call.prompt),
            completion_tokens=len(call.reply.tokens), cached_tokens=call.cached_tokens,
            ttft_s=call.first_token_at - call.arrival, duration_s=now - call.arrival))

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
        for call in [entry[2] for entry in self._waiting] + self._running:
            if not call.done.done():
                call.done.set_exception(BackendError(self.spec.name, why, retryable=True))
        for call in list(self._running):
            self._running.remove(call)
            self.cache.release(call.keys, call.keys, call.blocks, call.slot)
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
