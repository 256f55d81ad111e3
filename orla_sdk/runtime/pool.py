"""The live side of a plan's backends: a client, a queue and cache controls for each.

``orla_sdk.backends.connect`` turns each declared backend into a connection (a llama.cpp
backend declared without a url gets its own embedded engine, stopped on ``aclose``; all
of a pool's virtual-clock simulators share one clock); the pool puts a queue in front of
it, registers its cache controls with the memory manager and makes its calls.
``clients`` supplies ready-made ``Backend`` objects by name (a test double, an engine
built elsewhere).

The pool is where the agent layer meets the engines: each call is observed (queued,
started, first token, finished with its tokens) under its agent key, and so are tools;
the layer's policies order the queues, choose the slot to lend and keep or drop each
stage's context (the user's memory policies, then ``SmallIncrement``); after a call the
contexts of the agents predicted next are warmed: a saved llama.cpp slot restored into a
free slot, or on a shared prefix cache (vLLM, SGLang, the simulator) a warm-up request of
one token with that agent's last prompt.

The pool also owns the threads that plain ``def`` stage bodies and tools run in, one
pool of each: a body waits in its thread for its model calls, and a tool it calls must
never queue behind such waiting bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar, runtime_checkable

from orla_sdk.agents import (
    Admission,
    AgentEvent,
    AgentEventKind,
    AgentKey,
    AgentLayer,
    AgentPolicy,
    LeastRecentlyUsed,
    MemoryPolicy,
    SmallIncrement,
    policies_from,
)
from orla_sdk.backends.base import Backend, ChatRequest, ChatResult, token_limit
from orla_sdk.backends.connect import Connection, Connector
from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.errors import BackendDown, BackendError, Refused
from orla_sdk.ir import BackendSpec
from orla_sdk.runtime.deadlines import Deadlines
from orla_sdk.runtime.memory import MemoryManager
from orla_sdk.runtime.off_loop import thread_context
from orla_sdk.runtime.scheduler import BackendQueue
from orla_sdk.runtime.tool_calls import TOOL_TIMEOUT_S

T = TypeVar("T")
BACKEND_RETRIES = 2  # other transient failures (timeouts, lost connections, 500) tried again
RETRY_BACKOFF_S = 0.5  # seconds before the first retry, doubled for each next one
ENGINE_DOWN_S = 30.0  # how long a call waits for an engine that is down (a llama.cpp restart)
ENGINE_POLL_S = 0.25  # seconds before the first poll of an engine that is down, doubled...
ENGINE_POLL_MAX_S = 2.0  # ...up to this
ENGINE_OUTAGES = 3  # separate outages one call waits through (an engine that flaps)
CHARS_PER_TOKEN = 4  # to estimate a prompt's tokens before the engine counts them


@dataclass(slots=True)
class Served:
    """A call's result, with the seconds it waited in the queue and the slot it ran on."""

    result: ChatResult
    queue_wait_s: float
    slot: int | None
    attempts: int = 1  # the engine was asked this many times (the last one answered)
    seq: int = 0  # the last attempt's arrival number at the backend's queue


@dataclass
class LiveBackend:
    spec: BackendSpec
    client: Backend
    queue: BackendQueue


@runtime_checkable
class Pollable(Protocol):
    """A backend that can say whether its engine is up (``OpenAICompatibleBackend``)."""

    async def ready(self) -> bool: ...


@dataclass
class Retries:
    """The attempts of one call and the wait before the next: a transient failure is tried
    again ``BACKEND_RETRIES`` times, an engine that is down (``BackendDown``) polled and
    tried again for as long as ``engine_down_s`` lasts."""

    backend: str
    engine_down_s: float
    attempts: int = 0
    failures: int = 0  # the transient failures other than the engine being down
    poll_s: float = ENGINE_POLL_S
    down_until: float | None = None  # the end of the wait for the current outage
    outages: int = 0

    async def wait(self, exc: BackendError, client: Backend) -> None:
        """Wait for the next attempt after ``exc``; raise when it is not worth one."""
        if not exc.retryable:
            raise exc
        if isinstance(exc, BackendDown):
            await self._wait_until_up(exc, client)
            return
        if self.failures == BACKEND_RETRIES:
            raise exc
        await asyncio.sleep(RETRY_BACKOFF_S * 2 ** self.failures)
        self.failures += 1

    async def _wait_until_up(self, exc: BackendDown, client: Backend) -> None:
        """Poll until the engine answers, for up to ``engine_down_s`` from when this outage
        began; an engine that came back and went down again starts a new outage, at most
        ``ENGINE_OUTAGES`` of them a call."""
        loop = asyncio.get_running_loop()
        if self.down_until is None:
            self.outages += 1
            self.down_until = loop.time() + self.engine_down_s
        while (left := self.down_until - loop.time()) > 0 and self.outages <= ENGINE_OUTAGES:
            await asyncio.sleep(min(self.poll_s, left))
            self.poll_s = min(self.poll_s * 2, ENGINE_POLL_MAX_S)
            if not isinstance(client, Pollable) or await client.ready():
                self.down_until, self.poll_s = None, ENGINE_POLL_S  # up again
                return
        why = (f"down {self.outages} times during this call" if self.outages > ENGINE_OUTAGES
               else f"still down after {self.engine_down_s:g} s of waiting; "
               "BackendPool(engine_down_s=...) waits longer")
        raise BackendDown(self.backend, f"{exc.detail} ({why})", status=exc.status) from exc


class BackendPool:
    """Backends by name. Use ``async with BackendPool(plan.backends) as pool``.

    ``timeout`` is the deadline of each attempt of a model call, in seconds, however the
    engine spends it; ``engine_down_s`` how long a call waits for an engine that is down
    (``ENGINE_DOWN_S`` when not given). Plain ``def`` stage bodies run on ``body_threads``
    threads; at most ``tool_threads`` tool calls run at once, each within
    ``tool_timeout`` seconds (see ``orla_sdk.runtime.tool_calls``)."""

    def __init__(self, specs: Sequence[BackendSpec], *, slots: int = 4,
                 timeout: float = 120.0, memory_policies: Sequence[MemoryPolicy] = (),
                 clients: Mapping[str, Backend] | None = None, body_threads: int = 64,
                 tool_threads: int = 8, policies: Sequence[AgentPolicy | str] = (),
                 engine_down_s: float | None = None,
                 tool_timeout: float = TOOL_TIMEOUT_S) -> None:
        self.specs = list(specs)
        self.slots = slots
        self.timeout = timeout
        self.deadlines = Deadlines()
        self.engine_down_s = ENGINE_DOWN_S if engine_down_s is None else engine_down_s
        self.connector = Connector(clients=clients, slots=slots, timeout=timeout)
        self.clients = self.connector.clients
        self.backends: dict[str, LiveBackend] = {}
        self.connections: dict[str, Connection] = {}
        self.agents = AgentLayer([*(policies_from(policies) or [LeastRecentlyUsed()]),
                                  *memory_policies, SmallIncrement()])
        self.memory = MemoryManager(agents=self.agents)
        # for warm-ups: run -> (backend, agent) -> the agent's last request there
        self._last_requests: dict[str, dict[tuple[str, str], ChatRequest]] = {}
        self._warmups: set[asyncio.Task[Any]] = set()
        self.started = False
        self.body_threads = body_threads
        self.body_executor = self._body_executor()
        self.tool_threads, self.tool_timeout = tool_threads, tool_timeout
        self.tool_limit = asyncio.Semaphore(tool_threads)  # made anew at each start
        self.body_limit = asyncio.Semaphore(body_threads)  # so is this
        self.clock = self.connector.clock  # for the simulators declared with clock="virtual"
        self._virtual = any(s.kind == "sim" and s.options.get("clock") == "virtual"
                            for s in self.specs)
        self._closed = False

    def _body_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.body_threads, thread_name_prefix="orla-body")

    async def start(self) -> BackendPool:
        if self._closed:  # a pool opened again gets fresh threads
            self.body_executor = self._body_executor()
            self._closed = False
        self.tool_limit = asyncio.Semaphore(self.tool_threads)
        self.body_limit = asyncio.Semaphore(self.body_threads)
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
            spec.name, spec.scheduling, connection.limit, self.agents))

    async def call(self, backend: str, request: ChatRequest, *, run_id: str, stage: str = "",
                   priority: int = 50, critical_path: int = 0, own_slot: bool = False) -> Served:
        """One model call of ``run_id``: a turn in the backend's queue, the run's (or with
        ``own_slot``, its agent's) cache slot pinned, the engine called within the pool's
        ``timeout``. Transient failures are tried again after a backoff, and an engine that
        is down is waited for, unless text has already streamed to ``request.on_token``."""
        agent = request.agent or AgentKey("", stage, run_id)
        length = _prompt_chars(request)
        admitted = self._admit(agent, backend, request, length)
        observed = self.agents.observing
        if observed:
            self._observe("call_queued", agent, backend, admitted_tokens=admitted)
        try:
            served = await self._call(backend, request, run_id, stage, priority,
                                      critical_path, own_slot, length)
        except BaseException:
            if observed:
                self._observe("call_failed", agent, backend, admitted_tokens=admitted)
            raise
        if observed:
            result = served.result
            self._observe("call_finished", agent, backend, prompt_tokens=result.prompt_tokens,
                          cached_tokens=result.cached_tokens, ttft_s=result.ttft_s,
                          completion_tokens=result.completion_tokens, slot=served.slot,
                          seq=served.seq, admitted_tokens=admitted,
                          tool_calls=len(result.tool_calls))
        if agent.known and self.memory.controls(backend) and self.agents.implementing("prefetch"):
            await self._prefetch(backend, agent, request)
        return served

    async def _call(self, backend: str, request: ChatRequest, run_id: str, stage: str,
                    priority: int, critical_path: int, own_slot: bool, length: int) -> Served:
        live = self[backend]
        # a declared agent's slot is found by its prompt, on engines with slots only
        prompt = (json.dumps(request.messages, default=str)
                  if own_slot and backend in self.memory.tables else None)
        pieces = (_Pieces(self, request.agent, backend, request.on_token)
                  if request.on_token is not None else None)
        retries = Retries(backend, self.engine_down_s)
        while True:
            retries.attempts += 1
            try:
                async with (live.queue.turn(priority, critical_path, stage=stage,
                                            run_id=run_id, prompt_length=length,
                                            agent=request.agent) as turn,
                            self.memory.pin(run_id, backend, request.agent,
                                            prompt=prompt) as slot):
                    if request.agent is not None and self.agents.observing:
                        self._observe("call_started", request.agent, backend, slot=slot,
                                      seq=turn.seq,
                                      retry=retries.attempts > 1)  # not a new turn of the agent
                    with self.deadlines.start(self.timeout, backend):
                        result = await live.client.chat(_pinned(request, slot, pieces))
                return Served(result, turn.waited_s, slot, retries.attempts, turn.seq)
            except BackendError as exc:
                if pieces is not None and pieces.sent:  # asked again, it would go twice
                    raise
                await retries.wait(exc, live.client)

    def _admit(self, agent: AgentKey, backend: str, request: ChatRequest,
               prompt_chars: int) -> int:
        """The tokens the call may use (its prompt, estimated, and its ``max_tokens``), or
        ``Refused`` where an agent policy refuses it (a budget, say)."""
        tokens = prompt_chars // CHARS_PER_TOKEN + (token_limit(request) or 0)
        if not self.agents.implementing("admit"):
            return tokens
        refusal = self.agents.admit(Admission("call", agent, backend, tokens))
        if refusal is not None:
            self._observe("refused", agent, backend, rule=refusal)
            tenant = f", tenant {agent.tenant}" if agent.tenant else ""
            raise Refused(f"agent {agent.agent!r} (run {agent.run}{tenant}) may not call "
                          f"{backend!r}: {refusal}")
        return tokens

    async def in_body_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on one of the pool's body threads, with the caller's context variables.
        Bodies wait for a thread here, not in the executor's queue: the virtual clock stands
        still while a body runs on a thread, not while it waits for one."""
        async with self.body_limit:
            return await in_thread(self.body_executor, self.clock, fn, *args, **kwargs)

    def _observe(self, kind: AgentEventKind, key: AgentKey, backend: str, **data: Any) -> None:
        if self.agents.observing:
            data["at"] = self.now()
            self.agents.observe(AgentEvent(kind, key, backend, data))

    def now(self) -> float:
        """Seconds on the pool's clock: simulated ones where its simulators run on the
        virtual clock, else the machine's."""
        return self.clock.now() if self._virtual else time.monotonic()

    async def _prefetch(self, backend: str, key: AgentKey, request: ChatRequest) -> None:
        """Warm the contexts of the agents the layer's prefetch policies predict after
        ``key``'s call, on a backend whose cache orla can warm."""
        if backend in self.memory.tables:
            await self.memory.prefetch(backend, key)
            return
        last_of_run = self._last_requests.setdefault(key.run, {})
        # kept until the run ends: without its sink, which holds on to the stage
        last_of_run[(backend, key.agent)] = request.evolve(on_token=None)
        for agent in self.agents.prefetch(key):
            last = last_of_run.get((backend, agent))
            if last is not None:
                self._warm(backend, last)

    def _warm(self, backend: str, last: ChatRequest) -> None:
        """A warm-up of one token with ``last``'s prompt, in the background, never
        counted as the agent's turn; its failure only costs the prefetch."""
        params = {k: v for k, v in last.params.items() if k != "max_completion_tokens"}
        warmup = replace(last, params={**params, "max_tokens": 1}, stream=False,
                         on_token=None, json_schema=None, tools=[])
        assert last.agent is not None
        self._observe("prefetch", last.agent, backend, warmup=True)
        task = asyncio.ensure_future(self[backend].client.chat(warmup))
        self._warmups.add(task)
        task.add_done_callback(_forget_warmup(self._warmups))

    def end_run(self, run_id: str) -> None:
        """Forget what the agent layer kept of a finished run."""
        self._last_requests.pop(run_id, None)
        self._observe("turn", AgentKey("", "", run_id), "", ended=True)

    def __getitem__(self, name: str) -> LiveBackend:
        try:
            return self.backends[name]
        except KeyError:
            raise BackendError(name, "is not a backend of this pool; declare it in "
                               "orla.compile(backends=...)", retryable=False) from None

    async def aclose(self) -> None:
        """Close the clients, then the cache controls, then stop the engines the pool
        started. Every step runs whatever an earlier one raised (no engine is left
        behind); a failure is raised once all are done."""
        for task in list(self._warmups):
            task.cancel()
        async with contextlib.AsyncExitStack() as closing:  # its callbacks run last first
            closing.callback(self._forget_connections)
            closing.callback(self.deadlines.close)
            closing.callback(self.body_executor.shutdown, wait=False, cancel_futures=True)
            for connection in self.connections.values():
                closing.push_async_callback(connection.stop_engine)
            for connection in self.connections.values():
                closing.push_async_callback(connection.close_controls)
            for live in self.backends.values():
                closing.push_async_callback(live.client.aclose)

    def _forget_connections(self) -> None:
        self._closed = True
        self.backends.clear()
        self.connections.clear()
        self.started = False

    async def __aenter__(self) -> BackendPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Pieces:
    """A call's streamed text on its way to the caller (``sink``): the agent layer hears
    of the first piece, and once one has gone (``sent``) the call is not asked again. An
    object, not a closure: calls waiting in queues hold one each, and a closure's cells
    are so many more objects for the garbage collector to walk."""

    __slots__ = ("agent", "backend", "pool", "sent", "sink")

    def __init__(self, pool: BackendPool, agent: AgentKey | None, backend: str,
                 sink: Callable[[str], None]) -> None:
        self.pool, self.agent, self.backend, self.sink = pool, agent, backend, sink
        self.sent = False

    def __call__(self, text: str) -> None:
        if not self.sent and self.agent is not None:
            self.pool._observe("first_token", self.agent, self.backend)
        self.sent = True
        self.sink(text)


def _pinned(request: ChatRequest, slot: int | None, pieces: _Pieces | None) -> ChatRequest:
    """``request`` on ``slot``, its text streamed to ``pieces`` (the request itself where
    that changes nothing, as for most calls: one copy fewer a call)."""
    if slot == request.slot and pieces is None:  # no pieces: the request streams to nobody
        return request
    return request.evolve(slot=slot, on_token=pieces)


def _prompt_chars(request: ChatRequest) -> int:
    chars = 0  # a loop, not sum() over a generator: one frame fewer on every call
    for message in request.messages:
        if isinstance(message, dict):
            chars += len(str(message.get("content") or ""))
    return chars


def _forget_warmup(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def forget(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed warm-up is not an error of anyone's run
    return forget


async def in_thread(executor: Executor, clock: VirtualClock, fn: Callable[..., T], *args: Any,
                    **kwargs: Any) -> T:
    """``asyncio.to_thread`` on ``executor``: ``fn`` sees the caller's context variables,
    and ``clock`` stands still while it runs (``orla_sdk.runtime.off_loop``)."""
    context, hold = thread_context(clock)
    try:
        return await asyncio.get_running_loop().run_in_executor(
            executor, functools.partial(context.run, fn, *args, **kwargs))
    finally:
        hold.end()
