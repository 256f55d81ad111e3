"""The policies CacheSage is measured against, on the same layer.

- ``LeastRecentlyUsed``: the oldest context goes first (what orla did before the layer,
  and what an engine does on its own).
- ``StepsToNext``: a KVFlow-style policy that is told each agent's steps to its next call
  (from a workflow graph or, in experiments, the trace): the context due last goes first,
  and agents due within ``prefetch_within`` steps are warmed.
- ``Belady``: the clairvoyant bound, told when each context is next used; evicting the one
  used farthest in the future misses least (Belady's MIN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orla_sdk.agents.identity import AgentKey
from orla_sdk.agents.policy import AgentPolicy, Cached

NEVER = float("inf")


class LeastRecentlyUsed(AgentPolicy):
    name = "lru"

    def keep_scores(self, candidates: Sequence[Cached]) -> list[float]:
        return [-float(c.age) for c in candidates]


class StepsToNext(AgentPolicy):
    """``steps_to_next(key)``: steps of ``key.run`` until ``key.agent`` calls again
    (``None``: not again). The fewer steps to go, the longer a context is kept; ties go
    by recency."""

    name = "kvflow"

    def __init__(self, steps_to_next: Callable[[AgentKey], int | None], *,
                 prefetch_within: int = 2, agents: Callable[[AgentKey], Sequence[str]] | None
                 = None) -> None:
        self.steps_to_next = steps_to_next
        self.prefetch_within = prefetch_within
        self.agents = agents  # the agents of a run, for prefetch

    def keep_scores(self, candidates: Sequence[Cached]) -> list[float]:
        scores = []
        for c in candidates:
            steps = self.steps_to_next(c.key) if c.key is not None else None
            scores.append((-float(steps) if steps is not None else -NEVER) - c.age * 1e-9)
        return scores

    def prefetch(self, key: AgentKey) -> list[str]:
        if self.agents is None:
            return []
        due = []
        for agent in self.agents(key):
            steps = self.steps_to_next(AgentKey(key.workload, agent, key.run, key.step))
            if agent != key.agent and steps is not None and steps <= self.prefetch_within:
                due.append(agent)
        return due


class Belady(AgentPolicy):
    """``next_use(candidate)``: when the context is used next (any increasing measure:
    call index, time), ``inf`` for never. Evicts the context used farthest ahead."""

    name = "min"

    def __init__(self, next_use: Callable[[Cached], float]) -> None:
        self.next_use = next_use

    def keep_scores(self, candidates: Sequence[Cached]) -> list[float]:
        return [-self.next_use(c) for c in candidates]
