"""Memory policies: whether a stage's KV cache is kept for the stages after it.

The cache-span pass decides from the plan alone. At run time the memory manager asks
again with what the engine reported: a stage hint always wins; then the agent layer's
policies, in order, may decide (``AgentPolicy.cache_choice``): the user's memory
policies, then ``SmallIncrement``, which reads the real token delta; what nobody decided
keeps the plan's decision. A memory policy is an agent policy that implements only that
primitive, as ``decide``:

    class KeepBilling(orla.MemoryPolicy):
        def decide(self, event: orla.runtime.CacheEvent) -> orla.runtime.CacheChoice | None:
            if event.stage == "reply" and event.backend == "edge":
                return orla.runtime.CacheChoice("preserve", "billing replies are followed up")
            return None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orla_sdk.agents.policy import AgentPolicy

if TYPE_CHECKING:
    from orla_sdk.agents.policy import AgentLayer


@dataclass(frozen=True, init=False)
class CacheEvent:
    """A stage has finished on ``backend``: what its cache decision may look at."""

    run_id: str
    node: str
    stage: str
    backend: str
    decision: str         # the plan's: "preserve", "flush" or "deferred" (routed stage)
    reason: str
    hinted: bool          # the stage said cache="preserve" or "flush" itself
    prompt_tokens: int    # of the stage's first call
    cached_tokens: int    # of those, found in the engine's cache
    kept_before: bool     # the run already kept a context on this backend
    slot: int | None = None  # the slot the stage's last call ran on, where slots exist

    def __init__(self, run_id: str, node: str, stage: str, backend: str, decision: str,
                 reason: str, hinted: bool, prompt_tokens: int, cached_tokens: int,
                 kept_before: bool, slot: int | None = None) -> None:
        # written once, straight into the instance: a frozen dataclass's own __init__
        # sets each field through object.__setattr__, a microsecond on every stage
        vars(self).update(run_id=run_id, node=node, stage=stage, backend=backend,
                          decision=decision, reason=reason, hinted=hinted,
                          prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
                          kept_before=kept_before, slot=slot)

    @property
    def new_tokens(self) -> int:
        """The increment over the cached context."""
        return self.prompt_tokens - self.cached_tokens


@dataclass(frozen=True)
class CacheChoice:
    decision: str  # "preserve" or "flush"
    reason: str


class MemoryPolicy(AgentPolicy):
    """Decide nothing; subclasses return a ``CacheChoice`` for the events they care about."""

    name = "memory"

    def decide(self, event: CacheEvent) -> CacheChoice | None:
        return None

    def cache_choice(self, event: CacheEvent) -> CacheChoice | None:
        return self.decide(event)


@dataclass
class SmallIncrement(MemoryPolicy):
    """Keep a context while each stage adds little to it; drop it when it stops paying.

    A routed stage (decided at run time) keeps its context when it extended a kept one
    by at most ``max_new_tokens``. A preserve span is dropped when a stage found under
    ``min_reuse`` of its prompt cached and added more than ``max_new_tokens``: the
    workflow is not growing one context there, so holding it only costs memory.
    """

    max_new_tokens: int = 1024
    min_reuse: float = 0.5
    name = "small-increment"

    def decide(self, event: CacheEvent) -> CacheChoice | None:
        small = event.new_tokens <= self.max_new_tokens
        if event.decision == "deferred":
            if event.kept_before and small:
                return CacheChoice("preserve", f"small increment: {event.new_tokens} new "
                                   f"tokens over {event.cached_tokens} cached")
            return CacheChoice("flush", "routed stage that does not extend a kept context")
        reused = event.cached_tokens >= self.min_reuse * event.prompt_tokens
        if event.decision == "preserve" and event.kept_before and not (small or reused):
            return CacheChoice("flush", f"large increment: {event.new_tokens} new tokens, "
                               f"only {event.cached_tokens} cached")
        return None


def decide(event: CacheEvent, layer: AgentLayer) -> CacheChoice:
    """The decision for ``event``: the stage hint, else the first of the layer's policies
    that decides, else the plan's."""
    choice = None if event.hinted else layer.cache_choice(event)
    return choice or CacheChoice(event.decision, event.reason)
