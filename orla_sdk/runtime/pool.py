"""The live side of a plan's backends: a client, a queue and cache controls for each.

A llama.cpp backend declared without a url gets its own embedded engine, started here
and stopped on ``aclose``; a simulator backend runs in this process (all of a pool's
virtual-clock simulators share one clock); every other backend is reached at its url.
``clients`` supplies ready-made ``Backend`` objects by name (a test double, an engine
built elsewhere).

The pool also owns the threads that plain ``def`` stage bodies and tools run in, one
pool of each: a body waits in its thread for its model calls, and a tool it calls must
never queue behind such waiting bodies.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from orla_sdk.backends.base import Backend, ChatRequest, ChatResult
from orla_sdk.errors import BackendError
from orla_sdk.backends.engine import EngineConfig, LocalEngine
from orla_sdk.errors import EngineError
from orla_sdk.backends.global_cache import RESET_PATHS, GlobalCacheControl
from orla_sdk.backends.llamacpp_slots import LlamaCppControl
from orla_sdk.backends.openai_client import OpenAICompatibleBackend
from orla_sdk.backends.sim.engine import SimEngine, VirtualClock
from orla_sdk.ir import BackendSpec
from orla_sdk.runtime.cache_policy import MemoryPolicy
from orla_sdk.runtime.memory import MemoryManager
from orla_sdk.runtime.scheduler import BackendQueue

T = TypeVar("T")
DEFAULT_LIMIT = 8
BACKEND_RETRIES = 2  # transient failures (timeouts, lost connections, 5xx) tried again
RETRY_BACKOFF_S = 0.5  # requests in flight at an engine whose capacity orla cannot read


@dataclass(frozen=True)
class Served:
    """A call's result, with the seconds it waited in the queue and the slot it ran on."""

    result: ChatResult
    queue_wait_s: float
    slot: int | None


@dataclass
class LiveBackend:
    spec: BackendSpec
    client: Backend
    queue: BackendQueue


class BackendPool:
    """Backends by name. Use ``async with BackendPool(plan.backends) as pool``."""

    def __init__(self, specs: Sequence[BackendSpec], *, slots: int = 4,
                 timeout: float = 120.0, memory_policies: Sequence[MemoryPolicy] = (),
                 clients: Mapping[str, Backend] | None = None, body_threads: int = 64,
                 tool_threads: int = 8) -> None:
        self.specs = list(specs)
        self.slots = slots
        self.timeout = timeout
        self.clients = dict(clients or {})
        self.backends: dict[str, LiveBackend] = {}
        self.memory = MemoryManager(memory_policies)
        self.engines: list[LocalEngine] = []
        self._closers: list[Any] = []
        self.started = False
        self._threads = 0
        self.body_threads, self.tool_threads = body_threads, tool_threads
        self.body_executor, self.tool_executor = self._executors()
        self.clock = VirtualClock()  # for the simulators declared with clock="virtual"
        self._closed = False

    def _executors(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        return (ThreadPoolExecutor(self.body_threads, thread_name_prefix="orla-body"),
                ThreadPoolExecutor(self.tool_threads, thread_name_prefix="orla-tool"))

    async def start(self) -> BackendPool:
        if self._closed:  # a pool opened again gets fresh threads
            self.body_executor, self.tool_executor = self._executors()
            self._closed = False
        embedded = sum(1 for s in self.specs if s.kind == "llamacpp" and s.url is None
                       and s.name not in self.clients)
        # engines that share the cores must not oversubscribe them: llama.cpp's threads
        # spin while they wait, and two engines with a thread per core starve each other
        self._threads = max(1, _cores() // embedded) if embedded > 1 else 0
        for spec in self.specs:
            if spec.name not in self.backends:
                self.backends[spec.name] = await self._connect(spec)
        self.started = True
        return self

    async def _connect(self, spec: BackendSpec) -> LiveBackend:
        client = self.clients.get(spec.name)
        if isinstance(client, SimEngine):
            return self._attach_sim(spec, client)
        if client is not None:
            return self._live(spec, client, DEFAULT_LIMIT)
        if spec.kind == "sim":
            return self._connect_sim(spec)
        if spec.kind == "llamacpp":
            return await self._connect_llamacpp(spec)
        limit = DEFAULT_LIMIT
        if spec.kind in RESET_PATHS and spec.url:
            control = GlobalCacheControl(spec.url, spec.kind, timeout=self.timeout)
            self._closers.append(control)
            self.memory.add_shared(spec.name, control)
            limit = await _engine_limit(control) or DEFAULT_LIMIT
        client = OpenAICompatibleBackend(spec, timeout=self.timeout)
        return self._live(spec, client, limit)

    def _connect_sim(self, spec: BackendSpec) -> LiveBackend:
        profile = spec.models[0] if spec.models else "qwen3-8b"
        virtual = spec.options.get("clock", "real") == "virtual"
        engine = SimEngine(profile, name=spec.name, seed=int(spec.options.get("seed", 0)),
                           clock=self.clock if virtual else "real")
        return self._attach_sim(spec, engine)

    def _attach_sim(self, spec: BackendSpec, engine: SimEngine) -> LiveBackend:
        if spec.capabilities.cache_control == "slots":
            self.memory.add_slots(spec.name, engine, engine.max_batch)
        else:
            self.memory.add_shared(spec.name, engine)
        return self._live(spec, engine, engine.max_batch)

    async def _connect_llamacpp(self, spec: BackendSpec) -> LiveBackend:
        if spec.url is None:
            engine = LocalEngine(EngineConfig(slots=self.slots, alias=_alias(spec),
                                              threads=self._threads))
            await asyncio.to_thread(engine.start)
            self.engines.append(engine)
            spec = spec.model_copy(update={"url": engine.url})
        # a slot action waits until the slot is idle, so it gets a request's timeout
        control = LlamaCppControl(spec.url or "", timeout=self.timeout)
        self._closers.append(control)
        slots = len(await control.slots())
        self.memory.add_slots(spec.name, control, slots)
        client = OpenAICompatibleBackend(spec, timeout=self.timeout)
        return self._live(spec, client, max(slots, 1))

    def _live(self, spec: BackendSpec, client: Backend, limit: int) -> LiveBackend:
        return LiveBackend(spec, client,
                           BackendQueue.from_scheduling(spec.name, spec.scheduling, limit))

    async def call(self, backend: str, request: ChatRequest, *, run_id: str, stage: str = "",
                   priority: int = 50, critical_path: int = 0) -> Served:
        """One model call of ``run_id``: a turn in the backend's queue, the run's cache slot
        pinned, the engine called. Transient failures are tried again after a backoff,
        unless text has already streamed to ``request.on_token``."""
        live = self[backend]
        length = sum(len(str(m.get("content") or "")) for m in request.messages
                     if isinstance(m, dict))
        sink, streamed = request.on_token, False

        def on_token(text: str) -> None:
            nonlocal streamed
            streamed = True
            if sink is not None:
                sink(text)

        for attempt in range(BACKEND_RETRIES + 1):
            try:
                async with (live.queue.turn(priority, critical_path, stage=stage,
                                            run_id=run_id, prompt_length=length) as waited,
                            self.memory.pin(run_id, backend) as slot):
                    result = await live.client.chat(replace(
                        request, slot=slot, on_token=on_token if sink else None))
                return Served(result, waited, slot)
            except BackendError as exc:
                if not exc.retryable or streamed or attempt == BACKEND_RETRIES:
                    raise
            await asyncio.sleep(RETRY_BACKOFF_S * 2 ** attempt)
        raise AssertionError("unreachable")

    def __getitem__(self, name: str) -> LiveBackend:
        try:
            return self.backends[name]
        except KeyError:
            raise BackendError(name, "is not a backend of this pool; declare it in "
                               "orla.compile(backends=...)", retryable=False) from None

    async def aclose(self) -> None:
        for live in self.backends.values():
            await live.client.aclose()
        for control in self._closers:
            await control.aclose()
        for engine in self.engines:
            await asyncio.to_thread(engine.stop)
        self.body_executor.shutdown(wait=False, cancel_futures=True)
        self.tool_executor.shutdown(wait=False, cancel_futures=True)
        self._closed = True
        self.backends.clear()
        self.engines.clear()
        self._closers.clear()
        self.started = False

    async def __aenter__(self) -> BackendPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def in_thread(executor: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread`` on ``executor``: ``fn`` sees the caller's context variables."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


async def _engine_limit(control: GlobalCacheControl) -> int | None:
    """What the engine says it runs at once; None when it cannot say (or is not up yet:
    its first call will tell, as for any backend reached at a url)."""
    try:
        return await control.max_running_requests()
    except (EngineError, ValueError):
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _alias(spec: BackendSpec) -> str:
    return spec.models[0] if spec.models else EngineConfig().alias
