"""The stage context: which run, stage and backend a model call made in a stage body
belongs to. The executor sets it around each stage body; ``orla.generate`` reads it."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from orla_sdk.agents import AgentKey
from orla_sdk.errors import OrlaError
from orla_sdk.ir import MapperSpec, Node, Plan, StageSpec, Target
from orla_sdk.runtime.checkpoint import Durable
from orla_sdk.runtime.events import Emitter
from orla_sdk.runtime.pool import BackendPool
from orla_sdk.runtime.records import StageRecord
from orla_sdk.runtime.tool_calls import ToolRunner


@dataclass
class RunState:
    run_id: str
    plan: Plan
    pool: BackendPool
    loop: asyncio.AbstractEventLoop
    emit: Emitter = field(default_factory=lambda: Emitter("", None))
    # what each model call of the run awaits first, on the run's loop: a serving
    # session carries out the cache decisions of the units that have finished
    before_call: Callable[[], Awaitable[None]] | None = None
    steps: Iterator[int] = field(default_factory=itertools.count)  # the run's model calls
    durable: Durable | None = None  # the run's checkpoints, when it has a store
    warnings: list[str] = field(default_factory=list)  # the run result's


@dataclass
class StageContext:
    run: RunState
    node: Node
    spec: StageSpec
    record: StageRecord
    priority: int
    critical_path: int
    tools: dict[str, Callable[..., Any]] = field(default_factory=dict)
    routed_to: str | None = None  # the logical name a mapper picked, once it has
    key: str = ""  # the stage's checkpoint key: its node id and item indices
    tenant: str = ""  # whose API token the calls came with (the proxy's)
    conversations: Iterator[int] = field(default_factory=itertools.count)  # orla.generate calls

    def agent_key(self, step: int = 0) -> AgentKey:
        """The key of the agent this stage calls as: declared, else the stage's name."""
        return AgentKey(self.run.plan.name, self.spec.agent or self.spec.name,
                        self.run.run_id, step, self.tenant)

    @functools.cached_property
    def tool_runner(self) -> ToolRunner:
        """Runs the tools the stage's model calls (one per stage: calls of tools with
        effects that passed their deadline stay refused for the stage's life)."""
        pool = self.run.pool
        return ToolRunner(self.tools, {t.name: t for t in self.spec.tools}, pool.tool_limit,
                          pool.tool_timeout, self.run.durable, self.run.run_id, pool.agents,
                          self.agent_key(), self.record, pool.now, pool.clock)

    def logical_model(self) -> str:
        name = self.spec.model or self.run.plan.default_model
        if name is None:
            raise OrlaError(f"stage {self.spec.name!r} has no model; compile the plan first.")
        return name

    def mapped(self) -> Target | MapperSpec | None:
        """What the plan maps the stage's model to: once its mapper has picked a name
        (``routed_to``), what that name is mapped to."""
        return self.run.plan.mapping.get(self.routed_to or self.logical_model())

    def static_target(self) -> Target | None:
        mapped = self.mapped()
        return mapped if isinstance(mapped, Target) else None

    def mapper(self) -> MapperSpec | None:
        """The stage's mapper, while it is still to be asked (``routing.ready_target``
        answers None then)."""
        mapped = self.mapped()
        return mapped if isinstance(mapped, MapperSpec) and self.routed_to is None else None


current_stage: ContextVar[StageContext | None] = ContextVar("orla_current_stage", default=None)


def stage_context() -> StageContext:
    ctx = current_stage.get()
    if ctx is None:
        raise OrlaError("orla.generate/orla.chat was called outside a stage run by orla.run; "
                        "call it from the body of an @orla.stage function that a compiled "
                        "plan runs.")
    return ctx
