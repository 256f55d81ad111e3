"""The live side of a plan's backends: a client, a queue and cache controls for each.

``orla_sdk.backends.connect`` turns each declared backend into a connection (a llama.cpp
backend declared without a url gets its own embedded engine, stopped on ``aclose``; all
of a pool's virtual-clock simulators share one clock); the pool puts a queue in front of
it, registers its cache controls with the memory manager and makes its calls.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from orla_sdk.backends.base import Backend, ChatRequest, ChatResult
from orla_sdk.backends.connect import Connection, Connector
from orla_sdk.errors import BackendError
from orla_sdk.ir import BackendSpec
from orla_sdk.runtime.cache_policy import MemoryPolicy
from orla_sdk.runtime.memory import MemoryManager
from orla_sdk.runtime.scheduler import BackendQueue

T = TypeVar("T")
BACKEND_RETRIES = 2  # transient failures (timeouts, lost connections, 5xx) tried again
RETRY_BACKOFF_S = 0.5  # seconds before the first retry, doubled for each next one


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
        self.connector = Connector(clients=clients, slots=slots, timeout=timeout)
        self.clients = self.connector.clients
        self.backends: dict[str, LiveBackend] = {}
        self.connections: dict[str, Connection] = {}
        self.memory = MemoryManager(memory_policies)
        self.started = False
        self.body_threads, self.tool_threads = body_threads, tool_threads
        self.body_executor, self.tool_executor = self._executors()
        self.clock = self.connector.clock  # for the simulators declared with clock="virtual"
        self._closed = False

    def _executors(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        return (ThreadPoolExecutor(self.body_threads, thread_name_prefix="orla-body"),
                ThreadPoolExecutor(self.tool_threads, thread_name_prefix="orla-tool"))

    async def start(self) -> BackendPool:
        if self._closed:  # a pool opened again gets fresh threads
            self.body_executor, self.tool_executor = self._executors()
            self._closed = False
        self.connector.share_cores(self.specs)
        for spec in self.specs:
            if spec.name not in self.backends:
                self.backends[spec.name] = await self._connect(spec)
        self.started = True
        return self

    async def _connect(self, spec: BackendSpec) -> LiveBackend:
        connection = await self.connector.connect(spec)
        self.connections[spec.name] = connection
        if connection.slot_control is not None:
            self.memory.add_slots(spec.name, connection.slot_control, connection.slots)
        if connection.shared_cache is not None:
            self.memory.add_shared(spec.name, connection.shared_cache)
        return LiveBackend(connection.spec, connection.client, BackendQueue.from_scheduling(
            spec.name, spec.scheduling, connection.limit))

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
        for connection in self.connections.values():
            await connection.close_controls()
        for connection in self.connections.values():
            await connection.stop_engine()
        self.body_executor.shutdown(wait=False, cancel_futures=True)
        self.tool_executor.shutdown(wait=False, cancel_futures=True)
        self._closed = True
        self.backends.clear()
        self.connections.clear()
        self.started = False

    async def __aenter__(self) -> BackendPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def in_thread(executor: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread`` on ``executor``: ``fn`` sees the caller's context variables."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)
