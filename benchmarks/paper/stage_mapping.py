"""One configuration of the SWE-bench stage-mapping experiment, run on the simulator.

Two simulated vLLM engines share one simulated GPU (``SharedGpu``): Qwen3-8B (``heavy``)
with 60 % of its memory and Qwen3-4B (``light``) with 35 %. Each engine sits behind an
orla ``BackendQueue`` that lets ``in_flight`` calls in at once and orders the rest by
the configuration's policy. As in Orla's released example:

1. **Routing phase** (not timed, as in the example): every request is routed before the
   run. ``one-bit`` asks ``OneBitStageMapper``, whose question goes to the light engine
   as a real simulated call (the router's prompt, a JSON answer of 8 tokens), 16 at a
   time; the answer it reads is the labeler's decision. ``threshold`` asks
   ``ThresholdStageMapper`` (prompt length in words, no model call). ``none`` sends
   everything to the heavy engine (the baseline).
2. **Timed run**: the client keeps ``concurrency`` requests submitted (a new one as one
   finishes), in a fixed random order. A request's completion time runs from its
   submission to its last token; the wall time from the first submission to the last
   token. A request whose prompt and ``max_tokens`` exceed the engines' context
   (``max_model_len``) is refused at once, as vLLM refuses it.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.paper.data import Instance
from benchmarks.paper.labelers import Labels
from benchmarks.paper.outputs import ROUTER_ANSWER_TOKENS, Model, OutputModel
from benchmarks.paper.prices import PRICES
from benchmarks.paper.prompts import main_messages, router_text
from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.sim.profiles import get_profile
from orla_sdk.backends.sim.shared_gpu import SharedGpu, SharedGpuEngine
from orla_sdk.mapping import OneBitStageMapper, ThresholdStageMapper, prompt_words
from orla_sdk.runtime.scheduler import BackendQueue, ByPriority, Policy, ShortestFirst, Waiting


@dataclass(frozen=True)
class Settings:
    """The paper's settings (Orla's released SWE-bench example), as defaults."""

    concurrency: int = 512          # requests the client keeps submitted
    in_flight: int = 128            # calls orla lets into each engine at once
    router_parallelism: int = 16    # router calls at once in the routing phase
    max_model_len: int = 32768
    max_tokens: int = 4096
    heavy_profile: str = "qwen3-8b-60pct"
    light_profile: str = "qwen3-4b-35pct"
    order_seed: int = 0             # the submission order: a seeded shuffle


@dataclass(frozen=True)
class Setup:
    """One configuration: how requests are routed, ordered and admitted."""

    name: str
    mapper: Literal["none", "one-bit", "threshold"] = "none"
    labeler: str = "random"
    heavy_policy: Literal["fcfs", "sjf", "complexity"] = "fcfs"
    light_policy: Literal["fcfs", "sjf", "complexity"] = "fcfs"
    memory_aware: bool = False      # in-flight limit: what the engine's KV cache holds
    reroute_bound: int | None = None  # heavy calls go light while this many wait on heavy


class FewestFilesFirst(Policy):
    """Predicted complexity first (the priority: fewer files in the prompt is higher),
    then the shortest prompt, then first come."""

    name = "complexity"

    def key(self, waiting: Waiting) -> Any:
        return (-waiting.priority, waiting.prompt_length, waiting.seq)


POLICIES: dict[str, type[Policy]] = {"fcfs": Policy, "sjf": ShortestFirst,
                                     "complexity": FewestFilesFirst, "priority": ByPriority}


def complexity_priority(instance: Instance) -> int:
    """orla's 0..100 hint from what the prompt shows: each file it carries is a tenth less."""
    return max(0, 100 - 10 * (instance.files - 1))


@dataclass
class Served:
    """One request's outcome, times in simulated seconds from the start of the run."""

    instance_id: str
    backend: Model | None           # None: refused
    prompt_tokens: int
    output_tokens: int = 0
    cached_tokens: int = 0
    submitted: float = 0.0
    at_engine: float = 0.0          # when orla's queue let it in
    ttft_s: float = 0.0
    finished: float = 0.0
    cost: float = 0.0
    rerouted: bool = False          # routed heavy, served light under load

    @property
    def completion_s(self) -> float:
        return self.finished - self.submitted


@dataclass
class RunResult:
    setup: Setup
    served: list[Served]
    routes: dict[str, Model]
    routing_s: float                # the routing phase, simulated seconds
    routing_cost: float
    in_flight: dict[str, int]
    gpu_busy_s: float
    details: dict[str, Any] = field(default_factory=dict)

    def done(self) -> list[Served]:
        return [s for s in self.served if s.backend is not None]

    @property
    def wall_s(self) -> float:
        return max(s.finished for s in self.done())

    @property
    def mean_completion_s(self) -> float:
        return statistics.fmean(s.completion_s for s in self.done())

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.served) + self.routing_cost

    def light_count(self) -> int:
        return sum(route == "light" for route in self.routes.values())


@dataclass
class Backend:
    engine: SharedGpuEngine
    queue: BackendQueue


class Experiment:
    """The engines, queues and clock of one run."""

    def __init__(self, setup: Setup, settings: Settings, instances: Sequence[Instance],
                 outputs: OutputModel) -> None:
        self.setup, self.settings, self.outputs = setup, settings, outputs
        self.instances = list(instances)
        self.gpu = SharedGpu("rtx-pro-6000-max-q")
        self.clock = self.gpu.clock
        self.backends: dict[Model, Backend] = {
            "heavy": self._backend("heavy", settings.heavy_profile, setup.heavy_policy),
            "light": self._backend("light", settings.light_profile, setup.light_policy)}
        self.routing_s = 0.0
        self.routing_cost = 0.0

    def _backend(self, name: str, profile: str, policy: str) -> Backend:
        engine = SharedGpuEngine(get_profile(profile), gpu=self.gpu, name=name)
        queue = BackendQueue(name, self.settings.in_flight, request_policy=POLICIES[policy](),
                             stage_policy=POLICIES[policy](), bound=self.setup.reroute_bound)
        return Backend(engine, queue)

    # -- routing phase --
    async def route(self, labels: Labels) -> dict[str, Model]:
        if self.setup.mapper == "none":
            return {i.instance_id: "heavy" for i in self.instances}
        if self.setup.mapper == "threshold":
            return self._route_by_threshold()
        return await self._route_one_bit(labels)

    def _route_by_threshold(self) -> dict[str, Model]:
        """``ThresholdStageMapper`` on the main prompt's words, its threshold set so that
        the paper's share of requests (956 of 2,294) falls below it."""
        prompts = {i.instance_id: _prompt_text(i) for i in self.instances}
        scores = sorted(prompt_words(p) for p in prompts.values())
        threshold = scores[round(len(scores) * 956 / 2294)]
        mapper = ThresholdStageMapper(threshold=threshold)
        return {key: _as_model(_choose_now(mapper, prompt)) for key, prompt in prompts.items()}

    async def _route_one_bit(self, labels: Labels) -> dict[str, Model]:
        mapper = OneBitStageMapper()
        light = self.backends["light"]
        gate = asyncio.Semaphore(self.settings.router_parallelism)
        start = self.clock.now()

        async def route_one(instance: Instance) -> Model:
            async def ask(judge: str, text: str) -> str:
                request = ChatRequest(model=judge, messages=[{"role": "user", "content": text}],
                                      params={"max_tokens": ROUTER_ANSWER_TOKENS,
                                              "ignore_eos": True})
                async with light.queue.turn(stage="router",
                                            prompt_length=instance.router_prompt_tokens):
                    result = await light.engine.chat(request)
                self.routing_cost += PRICES["light"].cost(result.prompt_tokens,
                                                          result.completion_tokens)
                return "simple" if labels[instance.instance_id] else "complex"

            async with gate:
                return _as_model(await mapper.choose(router_text(instance, mapper.instruction),
                                                     ask))

        chosen = await asyncio.gather(*(route_one(i) for i in self.instances))
        self.routing_s = self.clock.now() - start
        return {i.instance_id: model for i, model in zip(self.instances, chosen, strict=True)}

    # -- the timed run --
    async def serve_all(self, routes: dict[str, Model]) -> list[Served]:
        self._admit_by_memory(routes)
        order = list(self.instances)
        random.Random(self.settings.order_seed).shuffle(order)
        window = asyncio.Semaphore(self.settings.concurrency)
        start = self.clock.now()

        async def submit(instance: Instance) -> Served:
            try:
                return await self._serve(instance, routes[instance.instance_id], start)
            finally:
                window.release()

        tasks = []
        for instance in order:
            await window.acquire()
            tasks.append(asyncio.ensure_future(submit(instance)))
        return list(await asyncio.gather(*tasks))

    async def _serve(self, instance: Instance, model: Model, start: float) -> Served:
        served = Served(instance.instance_id, model, instance.prompt_tokens,
                        submitted=self.clock.now() - start)
        if instance.prompt_tokens + self.settings.max_tokens > self.settings.max_model_len:
            served.backend = None
            served.finished = served.submitted
            return served
        if model == "heavy" and self._overloaded():
            model, served.backend, served.rerouted = "light", "light", True
        backend = self.backends[model]
        tokens = self.outputs.tokens(instance, model)
        request = ChatRequest(model=model, messages=list(main_messages(instance)),
                              params={"max_tokens": tokens, "ignore_eos": True})
        async with backend.queue.turn(priority=complexity_priority(instance), stage=model,
                                      prompt_length=instance.prompt_tokens):
            served.at_engine = self.clock.now() - start
            result = await backend.engine.chat(request)
        served.finished = self.clock.now() - start
        served.output_tokens, served.cached_tokens = result.completion_tokens, result.cached_tokens
        served.ttft_s = result.ttft_s
        served.cost = PRICES[model].cost(result.prompt_tokens, result.completion_tokens)
        return served

    def _overloaded(self) -> bool:
        """Rerouting under load, as orla's stage alternatives do: a heavy call goes to the
        light engine while the heavy queue is over its bound and the light one is not."""
        heavy, light = self.backends["heavy"].queue, self.backends["light"].queue
        return heavy.over_bound() and not light.over_bound()

    def _admit_by_memory(self, routes: dict[str, Model]) -> None:
        """Memory-aware admission: let into each engine as many calls as its KV cache holds
        at the mean size of the calls routed there (prompt and reply; the mean reply
        length is what orla would have measured on an earlier run)."""
        if not self.setup.memory_aware:
            return
        for model, backend in self.backends.items():
            mine = [i for i in self.instances if routes[i.instance_id] == model]
            if not mine:
                continue
            size = statistics.fmean(i.prompt_tokens + self.outputs.tokens(i, model) for i in mine)
            capacity = backend.engine.profile.capacity_tokens
            backend.queue.limit = max(1, min(self.settings.in_flight, int(capacity // size)))


def _prompt_text(instance: Instance) -> str:
    return "\n".join(str(m["content"]) for m in main_messages(instance))


def _choose_now(mapper: ThresholdStageMapper, prompt: str) -> str:
    """The threshold mapper never awaits its ``ask``: run its coroutine to the end."""
    coroutine = mapper.choose(prompt, _never_asked)
    try:
        coroutine.send(None)
    except StopIteration as done:
        return str(done.value)
    raise RuntimeError("ThresholdStageMapper.choose awaited something")


async def _never_asked(name: str, text: str) -> str:
    raise RuntimeError("the threshold mapper asks no model")


def _as_model(logical: str) -> Model:
    return "light" if logical == "light" else "heavy"


async def run_async(setup: Setup, instances: Sequence[Instance], labels: Labels,
                    outputs: OutputModel, settings: Settings) -> RunResult:
    experiment = Experiment(setup, settings, instances, outputs)
    routes = await experiment.route(labels)
    served = await experiment.serve_all(routes)
    for backend in experiment.backends.values():
        await backend.engine.aclose()
    return RunResult(setup, served, routes, experiment.routing_s, experiment.routing_cost,
                     {m: b.queue.limit for m, b in experiment.backends.items()},
                     experiment.gpu.busy_s)


def run(setup: Setup, instances: Sequence[Instance], labels: Labels,
        outputs: OutputModel | None = None, settings: Settings | None = None) -> RunResult:
    """Run one configuration to the end, on its own event loop and simulated clock."""
    return asyncio.run(run_async(setup, instances, labels, outputs or OutputModel(),
                                 settings or Settings()))
