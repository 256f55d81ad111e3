"""Block-level eviction driven by the agent layer, for a paged prefix cache (the
simulator's, as the CacheSage authors' vLLM patch does in vLLM's free-block queue).

Unreferenced blocks are grouped by the agent whose request used them last, least
recently used first within a group. Within a group a policy's score can only fall with
age, so each group's oldest block is its weakest: a victim is chosen among the oldest
blocks of the groups (one candidate an agent, not one a block), with age counted in
cache events (a block becoming unreferenced, or referenced again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator

from orla_sdk.agents.identity import AgentKey
from orla_sdk.agents.policy import AgentLayer, Cached


class ScoredOrder:
    """An ``IdleOrder`` for ``orla_sdk.backends.sim.cache.PrefixCache``."""

    def __init__(self, layer: AgentLayer) -> None:
        self.layer = layer
        self.events = 0
        self._groups: dict[Hashable, OrderedDict[bytes, int]] = {}  # owner -> key -> stamp
        self._owner: dict[bytes, Hashable] = {}

    def add(self, key: bytes, owner: Hashable) -> None:
        self.remove(key)
        self.events += 1
        self._groups.setdefault(owner, OrderedDict())[key] = self.events
        self._owner[key] = owner

    def remove(self, key: bytes) -> None:
        owner = self._owner.pop(key, _ABSENT)
        if owner is _ABSENT:
            return
        self.events += 1
        group = self._groups[owner]
        del group[key]
        if not group:
            del self._groups[owner]

    def victim(self) -> bytes:
        candidates = [Cached(owner if isinstance(owner, AgentKey) else None,
                             self.events - next(iter(group.values())), ref=owner)
                      for owner, group in self._groups.items()]
        chosen = self.layer.victim(candidates)
        return next(iter(self._groups[chosen.ref]))

    def __contains__(self, key: object) -> bool:
        return key in self._owner

    def __len__(self) -> int:
        return len(self._owner)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._owner))


_ABSENT = object()
