"""KV pinning across tool waits: while an agent waits on its tools, its context is kept,
for as long as the layer predicts the tools take (their observed durations, times a
margin), instead of being lent or evicted the moment its call returned. When the agent
calls again, or the time passes, the pin goes and the context ages as any other.

Among cached contexts, pinned ones are given up last, the one due back latest first;
the others go in the order of the ``inner`` policy (``PinAcrossTools(inner=CacheSage())``,
which also sees every event), by recency without one. Where nothing is pinned, the inner
policy decides alone (without one, the next policy of the layer).
"""

from __future__ import annotations

from collections.abc import Sequence

from orla_sdk.agents.events import AgentEvent
from orla_sdk.agents.identity import AgentKey
from orla_sdk.agents.policy import AgentPolicy, Cached

PINNED = 1e9  # above any recency or inner policy's score
ANY_TOOL = ""  # an agent's tools together: the guess when the tool is not known yet
LEARNING = 0.3  # weight of the newest duration in a tool's estimate

Owner = tuple[str, str, str]  # (workload, agent, run)


class PinAcrossTools(AgentPolicy):
    """``margin``: the predicted tool time is multiplied by it; ``first_guess_s``: the
    prediction for a tool never seen; ``max_s``: no pin lasts longer."""

    name = "pin"

    def __init__(self, *, margin: float = 1.5, first_guess_s: float = 2.0,
                 max_s: float = 60.0, inner: AgentPolicy | None = None) -> None:
        self.margin, self.first_guess_s, self.max_s = margin, first_guess_s, max_s
        self.inner = inner
        self.durations: dict[tuple[str, str], float] = {}  # (agent, tool) -> seconds
        self.until: dict[Owner, float] = {}
        self.now = 0.0  # the time of the latest event

    def observe(self, event: AgentEvent) -> None:
        if self.inner is not None:
            self.inner.observe(event)
        self.now = event.data.get("at", self.now)
        owner = _owner(event.key)
        if event.kind == "call_finished" and event.data.get("tool_calls"):
            self._pin(owner, self.predicted(event.key.agent, ANY_TOOL))  # native tool calls
        elif event.kind == "tool_started":
            self._pin(owner, self.predicted(event.key.agent, str(event.data.get("tool"))))
        elif event.kind == "tool_ended" and "duration_s" in event.data:
            seconds = float(event.data["duration_s"])
            self._learn(event.key.agent, str(event.data.get("tool")), seconds)
            self._learn(event.key.agent, ANY_TOOL, seconds)
        elif event.kind in ("call_queued", "call_started"):
            self.until.pop(owner, None)
        elif event.kind == "turn" and event.data.get("ended"):
            for ended in [o for o in self.until if o[2] == event.key.run]:
                del self.until[ended]

    def _pin(self, owner: Owner, predicted_s: float) -> None:
        until = self.now + min(predicted_s * self.margin, self.max_s)
        self.until[owner] = max(self.until.get(owner, 0.0), until)

    def predicted(self, agent: str, tool: str) -> float:
        return self.durations.get((agent, tool), self.first_guess_s)

    def _learn(self, agent: str, tool: str, seconds: float) -> None:
        known = self.durations.get((agent, tool))
        self.durations[(agent, tool)] = (seconds if known is None
                                         else known + LEARNING * (seconds - known))

    def keep_scores(self, candidates: Sequence[Cached]) -> Sequence[float] | None:
        inner = self.inner.keep_scores(candidates) if self.inner is not None else None
        left = [self._left(c.key) for c in candidates]
        if not any(left):
            return inner
        unpinned = inner if inner is not None else [-float(c.age) for c in candidates]
        # inner scores stay below PINNED: CacheSage's are at most 5, recency's negative
        return [PINNED - s if s else min(float(u), PINNED / 2)
                for s, u in zip(left, unpinned, strict=True)]

    def _left(self, key: AgentKey | None) -> float:
        """Seconds the context stays pinned (0: it is not)."""
        if key is None:
            return 0.0
        return max(0.0, self.until.get(_owner(key), 0.0) - self.now)


def _owner(key: AgentKey) -> Owner:
    return (key.workload, key.agent, key.run)
