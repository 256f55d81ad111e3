"""KV pinning across tool waits: while an agent waits on its tools, its context is kept,
for as long as the layer predicts the tools take (their observed durations, times a
margin), instead of being lent or evicted the moment its call returned. When the agent
calls again, or the time passes, the pin goes and the context ages as any other.

Among cached contexts, pinned ones are given up last, the one due back latest first;
the others go by recency (or by the next policy's scores, where none is pinned).
"""

from __future__ import annotations

from collections.abc import Sequence

from orla_sdk.agents.events import AgentEvent
from orla_sdk.agents.identity import AgentKey
from orla_sdk.agents.policy import AgentPolicy, Cached

PINNED = 1e9  # above any recency score
LEARNING = 0.3  # weight of the newest duration in a tool's estimate

Owner = tuple[str, str, str]  # (workload, agent, run)


class PinAcrossTools(AgentPolicy):
    """``margin``: the predicted tool time is multiplied by it; ``first_guess_s``: the
    prediction for a tool never seen; ``max_s``: no pin lasts longer."""

    name = "pin"

    def __init__(self, *, margin: float = 1.5, first_guess_s: float = 2.0,
                 max_s: float = 60.0) -> None:
        self.margin, self.first_guess_s, self.max_s = margin, first_guess_s, max_s
        self.durations: dict[tuple[str, str], float] = {}  # (agent, tool) -> seconds
        self.until: dict[Owner, float] = {}
        self.now = 0.0  # the time of the latest event

    def observe(self, event: AgentEvent) -> None:
        self.now = event.data.get("at", self.now)
        owner = _owner(event.key)
        if event.kind == "tool_started":
            wait = min(self.predicted(event.key.agent, str(event.data.get("tool"))) *
                       self.margin, self.max_s)
            self.until[owner] = max(self.until.get(owner, 0.0), self.now + wait)
        elif event.kind == "tool_ended" and "duration_s" in event.data:
            self._learn(event.key.agent, str(event.data.get("tool")),
                        float(event.data["duration_s"]))
        elif event.kind in ("call_queued", "call_started"):
            self.until.pop(owner, None)
        elif event.kind == "turn" and event.data.get("ended"):
            for ended in [o for o in self.until if o[2] == event.key.run]:
                del self.until[ended]

    def predicted(self, agent: str, tool: str) -> float:
        return self.durations.get((agent, tool), self.first_guess_s)

    def _learn(self, agent: str, tool: str, seconds: float) -> None:
        known = self.durations.get((agent, tool))
        self.durations[(agent, tool)] = (seconds if known is None
                                         else known + LEARNING * (seconds - known))

    def keep_scores(self, candidates: Sequence[Cached]) -> list[float] | None:
        left = [self._left(c.key) for c in candidates]
        if not any(left):
            return None
        return [PINNED - s if s else -float(c.age) for c, s in zip(candidates, left, strict=True)]

    def _left(self, key: AgentKey | None) -> float:
        """Seconds the context stays pinned (0: it is not)."""
        if key is None:
            return 0.0
        return max(0.0, self.until.get(_owner(key), 0.0) - self.now)


def _owner(key: AgentKey) -> Owner:
    return (key.workload, key.agent, key.run)
