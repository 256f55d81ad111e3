"""Connecting a declared backend: a ``BackendSpec`` turned into the live objects that serve
it, the one place that builds concrete engines and clients.

A llama.cpp backend declared without a url gets its own embedded engine, started here
(engines that share the machine split its cores); a simulator runs in this process (all
simulators declared with ``clock="virtual"`` share their connector's one clock); every
other backend is reached at its url. ``clients`` supplies ready-made ``Backend`` objects
by name (a test double, an engine built elsewhere).

A connection says how its engine's cache is controlled, per slot or as one cache shared
by every run, and leaves registering that with the runtime's memory manager to the
runtime: backends sit below it and know nothing of it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orla_sdk.backends.base import Backend
from orla_sdk.backends.declare import VLLM_CONCURRENCY
from orla_sdk.backends.engine import EngineConfig, LocalEngine
from orla_sdk.backends.global_cache import RESET_PATHS, GlobalCacheControl
from orla_sdk.backends.llamacpp_slots import LlamaCppControl
from orla_sdk.backends.openai_client import OpenAICompatibleBackend
from orla_sdk.backends.sim import SimEngine, VirtualClock
from orla_sdk.errors import BackendError
from orla_sdk.ir import BackendSpec

DEFAULT_LIMIT = 8  # requests at once, for an engine whose capacity orla cannot read
BATCHING_LIMIT = VLLM_CONCURRENCY  # for vLLM or SGLang when it does not say


class Closable(Protocol):
    async def aclose(self) -> None: ...


@dataclass
class Connection:
    """A backend, connected: ``client`` serves its calls, at most ``limit`` at once.

    ``spec`` is the declaration as connected (an embedded engine's url filled in). The
    engine's cache is controlled per slot (``slot_control``, over ``slots`` slots), as one
    cache all runs share (``shared_cache``), or not at all. ``closers`` are closed, and
    the embedded ``engine`` stopped, when the connection ends (the client is closed by
    whoever closes the client)."""

    spec: BackendSpec
    client: Backend
    limit: int
    slot_control: LlamaCppControl | SimEngine | None = None
    slots: int = 0
    shared_cache: GlobalCacheControl | SimEngine | None = None
    closers: list[Closable] = field(default_factory=list)
    engine: LocalEngine | None = None

    async def close_controls(self) -> None:
        for closer in self.closers:
            await closer.aclose()

    async def stop_engine(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)


class Connector:
    """Connects the backends of one pool: its simulators share one virtual clock
    (``clock``), its embedded llama.cpp engines share the machine's cores. Embedded
    engines run ``slots`` requests in parallel; HTTP calls time out after ``timeout``
    seconds."""

    def __init__(self, *, clients: Mapping[str, Backend] | None = None, slots: int = 4,
                 timeout: float = 120.0) -> None:
        self.clients = dict(clients or {})
        self.slots = slots
        self.timeout = timeout
        self.clock = VirtualClock()  # for the simulators declared with clock="virtual"
        self.threads = 0  # llama.cpp threads of each embedded engine; 0: its default

    def share_cores(self, specs: Sequence[BackendSpec]) -> None:
        """Split the cores between the engines that ``specs`` embed."""
        embedded = sum(1 for s in specs if s.kind == "llamacpp" and s.url is None
                       and s.name not in self.clients)
        # engines that share the cores must not oversubscribe them: llama.cpp's threads
        # spin while they wait, and two engines with a thread per core starve each other
        self.threads = max(1, _cores() // embedded) if embedded > 1 else 0

    async def connect(self, spec: BackendSpec) -> Connection:
        client = self.clients.get(spec.name)
        if isinstance(client, SimEngine):
            return _attach_sim(spec, client)
        if client is not None:
            return Connection(spec, client, DEFAULT_LIMIT)
        if spec.kind == "sim":
            return self._connect_sim(spec)
        if spec.kind == "llamacpp":
            return await self._connect_llamacpp(spec)
        if spec.kind in RESET_PATHS and spec.url:
            control = GlobalCacheControl(spec.url, spec.kind, timeout=self.timeout,
                                         backend=spec.name)
            limit = (spec.scheduling.limit or await _engine_limit(control)
                     or BATCHING_LIMIT)
            return Connection(spec, OpenAICompatibleBackend(spec, timeout=self.timeout),
                              limit, shared_cache=control, closers=[control])
        return Connection(spec, OpenAICompatibleBackend(spec, timeout=self.timeout),
                          DEFAULT_LIMIT)

    def _connect_sim(self, spec: BackendSpec) -> Connection:
        profile = spec.models[0] if spec.models else "qwen3-8b"
        virtual = spec.options.get("clock", "real") == "virtual"
        engine = SimEngine(profile, name=spec.name, seed=int(spec.options.get("seed", 0)),
                           clock=self.clock if virtual else "real")
        return _attach_sim(spec, engine)

    async def _connect_llamacpp(self, spec: BackendSpec) -> Connection:
        engine = None
        if spec.url is None:
            engine = LocalEngine(EngineConfig(slots=self.slots, alias=_alias(spec),
                                              threads=self.threads))
            await engine.astart()
            spec = spec.model_copy(update={"url": engine.url})
        # a slot action waits until the slot is idle, so it gets a request's timeout
        control = LlamaCppControl(spec.url or "", timeout=self.timeout, backend=spec.name)
        try:
            slots = len(await control.slots())
        except BaseException:  # nothing is returned to close: close what was opened
            await control.aclose()
            if engine is not None:
                await asyncio.to_thread(engine.stop)
            raise
        return Connection(spec, OpenAICompatibleBackend(spec, timeout=self.timeout),
                          max(slots, 1), slot_control=control, slots=slots,
                          closers=[control], engine=engine)


def _attach_sim(spec: BackendSpec, engine: SimEngine) -> Connection:
    if spec.capabilities.cache_control == "slots":
        return Connection(spec, engine, engine.max_batch, slot_control=engine,
                          slots=engine.max_batch)
    return Connection(spec, engine, engine.max_batch, shared_cache=engine)


async def _engine_limit(control: GlobalCacheControl) -> int | None:
    """What the engine says it runs at once; None when it cannot say (or is not up yet:
    its first call will tell, as for any backend reached at a url)."""
    try:
        return await control.max_running_requests()
    except (BackendError, ValueError):
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _alias(spec: BackendSpec) -> str:
    return spec.models[0] if spec.models else EngineConfig().alias
