"""Which agent speaks next: transitions between agents, learned online per workload.

For each agent the model keeps its last ``window`` successors within a run (a sliding
window, so it follows a workload whose pattern changes), and from them the probability
that an agent fires within the next ``horizon`` steps of a run. State is bounded:
``window`` successors per agent, and the last agent of each live run.
"""

from __future__ import annotations

from collections import Counter, deque

WINDOW = 8   # successors remembered per agent
HORIZON = 3  # steps ahead that "survives" looks


class TransitionModel:
    def __init__(self, window: int = WINDOW, horizon: int = HORIZON) -> None:
        self.window, self.horizon = window, horizon
        self.successors: dict[str, deque[str]] = {}
        self.last: dict[str, str] = {}  # run -> its last agent
        self.observations = 0
        self._survival: dict[str, dict[str, float]] = {}  # memo, cleared on observe

    def observe(self, run: str, agent: str) -> None:
        """``agent`` fired in ``run``: one transition from the run's previous agent."""
        previous = self.last.get(run)
        if previous is not None:
            row = self.successors.get(previous)
            if row is None:
                row = self.successors[previous] = deque(maxlen=self.window)
            row.append(agent)
            self._survival.clear()
        self.last[run] = agent
        self.observations += 1

    def end_run(self, run: str) -> None:
        self.last.pop(run, None)

    def next_probabilities(self, agent: str) -> dict[str, float]:
        row = self.successors.get(agent)
        if not row:
            return {}
        return {name: count / len(row) for name, count in Counter(row).items()}

    def survival(self, current: str) -> dict[str, float]:
        """P(agent fires within ``horizon`` steps | the run's current agent), for every
        agent reachable in that many steps (absent: 0)."""
        cached = self._survival.get(current)
        if cached is None:
            cached = self._survival[current] = self._first_passage(current, self.horizon, {})
        return cached

    def _first_passage(self, state: str, steps: int,
                       memo: dict[tuple[str, int], dict[str, float]]) -> dict[str, float]:
        """Exact probability of reaching each agent within ``steps`` steps from ``state``:
        f_k(x, a) = P(x, a) + sum over y != a of P(x, y) f_{k-1}(y, a)."""
        if steps == 0:
            return {}
        known = memo.get((state, steps))
        if known is not None:
            return known
        row = self.next_probabilities(state)
        reach = dict(row)
        for middle, p in row.items():
            for target, q in self._first_passage(middle, steps - 1, memo).items():
                if target != middle:
                    reach[target] = reach.get(target, 0.0) + p * q
        memo[(state, steps)] = reach
        return reach

    def state_bytes(self) -> int:
        """The learned state as a compact encoding would hold it: one byte an agent id in
        each successor window (up to 256 agents a workload; two bytes beyond)."""
        agents = len(self.successors.keys() | {a for row in self.successors.values()
                                               for a in row})
        width = 1 if agents <= 256 else 2
        return sum(len(row) for row in self.successors.values()) * width + agents * width
