"""The live side of a plan's backends: a client, a queue and cache controls for each.

A llama.cpp backend declared without a url gets its own embedded engine, started here
and stopped on ``aclose``; every other backend is reached at its url.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from orla_sdk.backends.base import Backend, BackendError
from orla_sdk.backends.engine import EngineConfig, LocalEngine
from orla_sdk.backends.llamacpp_slots import LlamaCppControl
from orla_sdk.backends.openai_client import OpenAICompatibleBackend
from orla_sdk.ir import BackendSpec
from orla_sdk.runtime.memory import MemoryManager
from orla_sdk.runtime.scheduler import BackendQueue

DEFAULT_LIMIT = 8  # requests in flight at an engine whose capacity orla cannot read


@dataclass
class LiveBackend:
    spec: BackendSpec
    client: Backend
    queue: BackendQueue


class BackendPool:
    """Backends by name. Use ``async with BackendPool(plan.backends) as pool``."""

    def __init__(self, specs: list[BackendSpec], *, slots: int = 4,
                 timeout: float = 120.0) -> None:
        self.specs = specs
        self.slots = slots
        self.timeout = timeout
        self.backends: dict[str, LiveBackend] = {}
        self.memory = MemoryManager()
        self.engines: list[LocalEngine] = []

    async def start(self) -> BackendPool:
        for spec in self.specs:
            if spec.name not in self.backends:
                self.backends[spec.name] = await self._connect(spec)
        return self

    async def _connect(self, spec: BackendSpec) -> LiveBackend:
        if spec.kind == "sim":
            raise BackendError(spec.name, "the simulator backend is not available in this "
                               "runtime yet; map the stage to an engine with a url.",
                               retryable=False)
        if spec.kind == "llamacpp":
            return await self._connect_llamacpp(spec)
        client = OpenAICompatibleBackend(spec, timeout=self.timeout)
        return LiveBackend(spec, client, BackendQueue(spec.name, DEFAULT_LIMIT))

    async def _connect_llamacpp(self, spec: BackendSpec) -> LiveBackend:
        if spec.url is None:
            engine = LocalEngine(EngineConfig(slots=self.slots, alias=_alias(spec)))
            await asyncio.to_thread(engine.start)
            self.engines.append(engine)
            spec = spec.model_copy(update={"url": engine.url})
        # a slot action waits until the slot is idle, so it gets a request's timeout
        control = LlamaCppControl(spec.url or "", timeout=self.timeout)
        slots = len(await control.slots())
        self.memory.add_llamacpp(spec.name, control, slots)
        client = OpenAICompatibleBackend(spec, timeout=self.timeout)
        return LiveBackend(spec, client, BackendQueue(spec.name, max(slots, 1)))

    def __getitem__(self, name: str) -> LiveBackend:
        try:
            return self.backends[name]
        except KeyError:
            raise BackendError(name, "is not a backend of this pool; declare it in "
                               "orla.compile(backends=...)", retryable=False) from None

    async def aclose(self) -> None:
        for live in self.backends.values():
            await live.client.aclose()
        for table in self.memory.tables.values():
            await table.control.aclose()
        for engine in self.engines:
            await asyncio.to_thread(engine.stop)
        self.backends.clear()
        self.engines.clear()

    async def __aenter__(self) -> BackendPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _alias(spec: BackendSpec) -> str:
    return spec.models[0] if spec.models else EngineConfig().alias
