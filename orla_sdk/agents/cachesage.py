"""CacheSage: keep the KV cache of the agents that will speak soon.

It learns each workload's agent-to-agent transitions online (``TransitionModel``) and
scores a cached context of agent ``a`` in a run whose current agent is ``c`` as

    W * P(a fires within K steps | c) + exp(-lambda * age)

with ``age`` counted in cache events. A context of an unknown agent scores on recency
alone, which is least-recently-used. After each call it predicts the run's next agent
and asks for that agent's context to be warmed when the prediction is confident enough.
Warm-up requests are never counted as transitions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orla_sdk.agents.events import AgentEvent
from orla_sdk.agents.identity import AgentKey
from orla_sdk.agents.policy import AgentPolicy, Cached
from orla_sdk.agents.transitions import HORIZON, WINDOW, TransitionModel


class CacheSage(AgentPolicy):
    name = "cachesage"

    def __init__(self, *, weight: float = 4.0, decay: float = 0.1, horizon: int = HORIZON,
                 window: int = WINDOW, prefetch_above: float = 0.3) -> None:
        self.weight, self.decay = weight, decay
        self.horizon, self.window = horizon, window
        self.prefetch_above = prefetch_above
        self.models: dict[str, TransitionModel] = {}  # by workload

    def model(self, workload: str) -> TransitionModel:
        model = self.models.get(workload)
        if model is None:
            model = self.models[workload] = TransitionModel(self.window, self.horizon)
        return model

    def observe(self, event: AgentEvent) -> None:
        key = event.key
        if (event.kind == "call_started" and key.known and not event.warmup
                and not event.data.get("retry")):
            self.model(key.workload).observe(key.run, key.agent)
        elif event.kind == "turn" and event.data.get("ended"):  # the run is over
            for workload, model in self.models.items():
                if workload == key.workload or not key.workload:
                    model.end_run(key.run)

    def survival(self, key: AgentKey) -> float:
        """P(``key.agent`` fires within K steps of ``key.run``); 0 for what is unknown."""
        model = self.models.get(key.workload)
        if model is None or not key.known:
            return 0.0
        current = model.last.get(key.run)
        if current is None:
            return 0.0
        return model.survival(current).get(key.agent, 0.0)

    def keep_scores(self, candidates: Sequence[Cached]) -> list[float]:
        return [(self.weight * self.survival(c.key) if c.key is not None else 0.0)
                + math.exp(-self.decay * c.age) for c in candidates]

    def predict_next(self, key: AgentKey) -> dict[str, float]:
        model = self.models.get(key.workload)
        return model.next_probabilities(key.agent) if model is not None else {}

    def prefetch(self, key: AgentKey) -> list[str]:
        """The run's most likely next agent, when it is another agent and likely enough."""
        ranked = sorted(self.predict_next(key).items(), key=lambda item: -item[1])
        if ranked and ranked[0][0] != key.agent and ranked[0][1] >= self.prefetch_above:
            return [ranked[0][0]]
        return []

    def state_bytes(self) -> dict[str, int]:
        return {workload: model.state_bytes() for workload, model in self.models.items()}
