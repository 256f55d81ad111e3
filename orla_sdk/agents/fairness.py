"""Fair share: weighted start-time fair queuing (SFQ) on the tokens each flow is served,
at each backend's queue. A flow is an agent, a run, a workload or a tenant.

Each backend keeps a virtual time, the start tag of the call it admitted last. A call
that must wait gets the start tag ``max(virtual time, its flow's finish tag)``, and its
flow's finish tag moves on by the call's estimated tokens over the flow's weight; the
smallest start tag goes first. When the call finishes, the estimate is corrected by the
tokens really served (prompt and completion), so a flow that floods the backend with long
calls falls behind flows that make ordinary ones, whatever it sends.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Collection, Mapping
from typing import Any

from orla_sdk.agents.events import AgentEvent
from orla_sdk.agents.identity import AgentKey
from orla_sdk.agents.policy import AgentPolicy, Queued
from orla_sdk.agents.scopes import Scope, checked_scope, scope_key

FIRST_ESTIMATE = 256.0  # tokens a flow's first call is taken to cost
LEARNING = 0.2  # weight of the newest call in a flow's estimate


class FairShare(AgentPolicy):
    """``by``: what a flow is ("agent", "run", "workload" or "tenant"); ``weights``: a
    flow's share, by the last part of its name (an agent's, a run's ... name), 1 for the
    rest; ``backends``: where it orders the queue (all, when not given)."""

    name = "fair"

    def __init__(self, by: Scope = "agent", *, weights: Mapping[str, float] | None = None,
                 backends: Collection[str] | None = None) -> None:
        self.by = checked_scope(by)
        self.weights = dict(weights or {})
        self.backends = set(backends) if backends is not None else None
        self.virtual: dict[str, float] = defaultdict(float)
        self.finish: dict[tuple[str, Any], float] = defaultdict(float)
        self.waiting: dict[tuple[str, Any], deque[float]] = defaultdict(deque)
        self.estimate: dict[tuple[str, Any], float] = defaultdict(lambda: FIRST_ESTIMATE)

    def queue_key(self, waiting: Queued) -> Any:
        if not self._orders(waiting.backend) or waiting.agent is None:
            return None
        flow = self._flow(waiting.backend, waiting.agent)
        start = self._start(flow)
        self.waiting[flow].append(start)
        return (start, waiting.seq)

    def observe(self, event: AgentEvent) -> None:
        if event.backend is None or not self._orders(event.backend) or event.warmup:
            return
        flow = self._flow(event.backend, event.key)
        if event.kind == "call_started":
            admitted = self.waiting[flow]
            start = admitted.popleft() if admitted else self._start(flow)  # or: at once
            self.virtual[event.backend] = max(self.virtual[event.backend], start)
        elif event.kind == "call_finished":
            served = (event.data.get("prompt_tokens", 0)
                      + event.data.get("completion_tokens", 0))
            self.finish[flow] += (served - self.estimate[flow]) / self._weight(flow)
            self.estimate[flow] += LEARNING * (served - self.estimate[flow])

    def _orders(self, backend: str) -> bool:
        return bool(backend) and (self.backends is None or backend in self.backends)

    def _flow(self, backend: str, key: AgentKey) -> tuple[str, Any]:
        return (backend, scope_key(key, self.by))

    def _start(self, flow: tuple[str, Any]) -> float:
        """The flow's next start tag; its finish tag moves past the call's estimate."""
        start = max(self.virtual[flow[0]], self.finish[flow])
        self.finish[flow] = start + self.estimate[flow] / self._weight(flow)
        return start

    def _weight(self, flow: tuple[str, Any]) -> float:
        return self.weights.get(flow[1][-1], 1.0)
