"""The backend queue: the second level of scheduling, where stages meet at an engine.

Each backend admits at most ``limit`` requests at once. Requests that must wait sit in
per-stage sub-queues: a *request policy* orders each sub-queue, and when a turn frees up
a *stage policy* picks which sub-queue's head goes next. A policy is a sort key, the
smallest key first:

    class ShortestPromptFirst(orla.Policy):
        def key(self, waiting: orla.runtime.Waiting) -> tuple[int, int]:
            return (waiting.prompt_length, waiting.seq)

A stage holds a turn only for one model call, so a stage busy running a tool lets
other work in. The agent layer orders first: where one of its policies gives a call a
``queue_key`` (an agent-aware order), that key decides, at both levels; the backend's
own policies order the rest.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orla_sdk.agents import AgentKey, AgentLayer
from orla_sdk.errors import OrlaError
from orla_sdk.ir import Scheduling
from orla_sdk.refs import load_ref


@dataclass(eq=False)
class Waiting:
    """A request waiting for a turn: what a policy may sort by."""

    stage: str
    run_id: str
    priority: int        # 0..100, higher first under the priority policy
    critical_path: int   # stages that still depend on this one
    prompt_length: int   # characters of the prompt
    seq: int             # arrival order at this backend
    agent: AgentKey | None = None  # who makes the call
    backend: str = ""  # where it waits
    ordered: Any = None  # the agent layer's sort key, where one of its policies gives one
    arrived: float = field(default_factory=time.perf_counter)
    waited_s: float = 0.0  # from arrival to its turn
    granted: asyncio.Future[None] | None = None
    withdrawn: bool = False


class Policy:
    """First come, first served; subclasses change ``key``."""

    name = "fcfs"

    def key(self, waiting: Waiting) -> Any:
        return (waiting.seq,)


class ByPriority(Policy):
    """Highest priority first, then the longest critical path, then first come."""

    name = "priority"

    def key(self, waiting: Waiting) -> Any:
        return (-waiting.priority, -waiting.critical_path, waiting.seq)


class ShortestFirst(Policy):
    """Shortest prompt first (shortest-job-first by prompt length), then first come."""

    name = "sjf"

    def key(self, waiting: Waiting) -> Any:
        return (waiting.prompt_length, waiting.seq)


BUILTIN_POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Policy, ByPriority, ShortestFirst)}


def load_policy(name: str) -> Policy:
    """A built-in policy by name, or a ``Policy`` subclass by "module:Class" reference."""
    if name in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[name]()
    if ":" not in name:
        raise OrlaError(f"unknown scheduling policy {name!r}; use one of "
                        f"{sorted(BUILTIN_POLICIES)} or a 'module:Class' reference.")
    cls = load_ref(name)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise OrlaError(f"{name!r} is not a subclass of orla.Policy.")
    return cls()


class BackendQueue:
    def __init__(self, name: str, limit: int, *, stage_policy: Policy | None = None,
                 request_policy: Policy | None = None,
                 stage_policies: Mapping[str, Policy] | None = None,
                 bound: int | None = None, agents: AgentLayer | None = None) -> None:
        if limit < 1:
            raise ValueError(f"backend {name!r}: a queue needs a limit of at least 1")
        self.name = name
        self.limit = limit
        self.bound = bound
        self.stage_policy = stage_policy or ByPriority()
        self.request_policy = request_policy or ByPriority()
        self.stage_policies = dict(stage_policies or {})
        self.agents = agents if agents is not None else AgentLayer()
        self.running = 0
        self.waiting = 0
        self._queues: dict[str, list[tuple[Any, int, Waiting]]] = {}
        self._arrivals = itertools.count()

    @classmethod
    def from_scheduling(cls, name: str, scheduling: Scheduling, default_limit: int,
                        agents: AgentLayer | None = None) -> BackendQueue:
        return cls(name, scheduling.limit or default_limit,
                   stage_policy=load_policy(scheduling.stage_policy),
                   request_policy=load_policy(scheduling.request_policy),
                   stage_policies={stage: load_policy(p)
                                   for stage, p in scheduling.stage_policies.items()},
                   bound=scheduling.queue_bound, agents=agents)

    def over_bound(self) -> bool:
        """Whether stages that name alternatives should go elsewhere."""
        return self.bound is not None and self.waiting >= self.bound

    def turn(self, priority: int = 50, critical_path: int = 0, *, stage: str = "",
             run_id: str = "", prompt_length: int = 0, agent: AgentKey | None = None) -> Turn:
        """A turn at the engine, as ``async with queue.turn(...) as entry``: waits for it,
        gives the call's entry (its arrival number ``seq``, and ``waited_s``), and passes
        the turn on when the call is over."""
        return Turn(self, Waiting(stage, run_id, priority, critical_path, prompt_length,
                                  next(self._arrivals), agent, self.name))

    def _enqueue(self, entry: Waiting) -> asyncio.Future[None]:
        """Queue ``entry``; the future its turn is granted by."""
        entry.granted = asyncio.get_running_loop().create_future()
        entry.ordered = self.agents.queue_key(entry) if self.agents else None
        policy = self.stage_policies.get(entry.stage, self.request_policy)
        heapq.heappush(self._queues.setdefault(entry.stage, []),
                       (self._key(entry, policy), entry.seq, entry))
        self.waiting += 1
        return entry.granted

    def _withdraw(self, entry: Waiting) -> None:
        """``entry``'s call was cancelled while it waited."""
        assert entry.granted is not None
        if entry.granted.done() and not entry.granted.cancelled():
            self._release()  # granted just as it was cancelled: pass the turn on
        else:
            entry.withdrawn = True
            self.waiting -= 1

    def _release(self) -> None:
        chosen = self._next()
        if chosen is None:
            self.running -= 1
            return
        self.waiting -= 1
        assert chosen.granted is not None
        chosen.granted.set_result(None)  # the turn passes on; running stays the same

    def _next(self) -> Waiting | None:
        """The head the stage policy picks among the sub-queues' heads (the first of equal
        ones)."""
        chosen: Waiting | None = None
        best: tuple[int, Any] | None = None
        for stage, queue in list(self._queues.items()):
            while queue and _gone(queue[0][2]):
                heapq.heappop(queue)
            if not queue:
                del self._queues[stage]
                continue
            key = self._key(queue[0][2], self.stage_policy)
            if best is None or key < best:
                chosen, best = queue[0][2], key
        if chosen is not None:
            heapq.heappop(self._queues[chosen.stage])
        return chosen

    @staticmethod
    def _key(waiting: Waiting, policy: Policy) -> tuple[int, Any]:
        """The agent layer's key (asked once, on arrival) where it gave one, before the
        backend policy's keys."""
        if waiting.ordered is not None:
            return (0, waiting.ordered)
        return (1, policy.key(waiting))


class Turn:
    """One call's turn at a backend's queue (see ``BackendQueue.turn``)."""

    __slots__ = ("entry", "queue")

    def __init__(self, queue: BackendQueue, entry: Waiting) -> None:
        self.queue, self.entry = queue, entry

    async def __aenter__(self) -> Waiting:
        queue, entry = self.queue, self.entry
        if queue.running < queue.limit and not queue.waiting:
            queue.running += 1
        else:  # awaited here, not in a coroutine of the queue's: one frame fewer a call
            granted = queue._enqueue(entry)
            try:
                await granted
            except asyncio.CancelledError:
                queue._withdraw(entry)
                raise
        entry.waited_s = time.perf_counter() - entry.arrived
        return entry

    async def __aexit__(self, *exc: object) -> None:
        self.queue._release()


def _gone(waiting: Waiting) -> bool:
    """Withdrawn, or cancelled and about to withdraw (its task has not run yet)."""
    return waiting.withdrawn or (waiting.granted is not None and waiting.granted.done())
