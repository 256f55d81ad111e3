"""Fair share: weighted start-time fair queuing (SFQ) on the tokens each flow is served,
at each backend's queue. A flow is an agent, a run, a workload or a tenant.

Each backend keeps a virtual time, the start tag of the call that started last. A call
gets the start tag ``max(virtual time, its flow's finish tag)`` when it must wait (or as
it starts, when it need not), and its flow's finish tag moves on by the call's estimated
tokens over the flow's weight; the smallest start tag goes first. When the call
finishes, its flow's finish tag is corrected by the tokens really served (prompt and
completion) against what was charged, so a flow that floods the backend with long calls
falls behind flows that make ordinary ones, whatever it sends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from typing import Any

from orla_sdk.agents.events import AgentEvent
from orla_sdk.agents.identity import AgentKey
from orla_sdk.agents.policy import AgentPolicy, Queued
from orla_sdk.agents.scopes import Scope, checked_scope, scope_key

FIRST_ESTIMATE = 256.0  # tokens a flow's first call is taken to cost
LEARNING = 0.2  # weight of the newest call in a flow's estimate

Flow = tuple[str, tuple[str, ...]]  # (backend, scope key)
Call = tuple[str, int]  # (backend, arrival number at its queue)


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
        self.finish: dict[Flow, float] = defaultdict(float)
        self.estimate: dict[Flow, float] = defaultdict(lambda: FIRST_ESTIMATE)
        self.tagged: dict[Call, tuple[str, float, float]] = {}  # run, start tag, charged
        self.charged: dict[Call, tuple[str, float]] = {}  # started calls: run, charged

    def queue_key(self, waiting: Queued) -> Any:
        if not self._orders(waiting.backend) or waiting.agent is None:
            return None
        start, charged = self._charge(self._flow(waiting.backend, waiting.agent))
        self.tagged[(waiting.backend, waiting.seq)] = (waiting.agent.run, start, charged)
        return (start, waiting.seq)

    def observe(self, event: AgentEvent) -> None:
        if event.kind == "turn" and event.data.get("ended"):
            self._forget_run(event.key.run)
        if event.backend is None or not self._orders(event.backend) or event.warmup:
            return
        call = (event.backend, int(event.data.get("seq", -1)))
        flow = self._flow(event.backend, event.key)
        if event.kind == "call_started":
            tagged = self.tagged.pop(call, None)
            _, start, charged = tagged or (None, *self._charge(flow))  # started at once
            self.virtual[event.backend] = max(self.virtual[event.backend], start)
            self.charged[call] = (event.key.run, charged)
        elif event.kind == "call_finished" and call in self.charged:
            _, charged = self.charged.pop(call)
            served = event.served_tokens
            self.finish[flow] += (served - charged) / self._weight(flow)
            self.estimate[flow] += LEARNING * (served - self.estimate[flow])

    def _orders(self, backend: str) -> bool:
        return bool(backend) and (self.backends is None or backend in self.backends)

    def _flow(self, backend: str, key: AgentKey) -> Flow:
        return (backend, scope_key(key, self.by))

    def _charge(self, flow: Flow) -> tuple[float, float]:
        """The flow's next start tag, and the estimate its finish tag moved on by."""
        start = max(self.virtual[flow[0]], self.finish[flow])
        charged = self.estimate[flow]
        self.finish[flow] = start + charged / self._weight(flow)
        return start, charged

    def _weight(self, flow: Flow) -> float:
        return self.weights.get(flow[1][-1], 1.0)

    def _forget_run(self, run: str) -> None:
        """Calls of an ended run that never started (withdrawn) or never finished
        (failed), and with ``by="run"`` its flows."""
        self.tagged = {c: t for c, t in self.tagged.items() if t[0] != run}
        self.charged = {c: t for c, t in self.charged.items() if t[0] != run}
        if self.by == "run":
            for flow in [f for f in self.finish if f[1][-1] == run]:
                del self.finish[flow]
                self.estimate.pop(flow, None)
