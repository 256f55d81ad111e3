"""The runs and turns of a served team: what its model clients share.

- A call learns who makes it from ``MessageHandlerContext.agent_id()``: in a group chat
  each participant's container and the manager are agents whose type is
  ``"<name>_<team id>"`` and whose key is the team id, which maps back to the agent's
  name. Outside a message handler the client's own agent name stands in.
- A unit of work (a ``StageContext`` and a report row) is one agent turn: consecutive calls
  of the same agent within a run (a tool round and its reflection, the selector's retries).
  A turn is priced and traced as one span with a child per call, and a turn's calls share
  its priority and record.
- Each ``ServedTeam.run`` is one orla run: its calls share the run's cache slot, and the
  run is settled ``"over"`` when the team stops. A served agent used on its own, outside
  ``run``, makes each call a run of its own.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Mapping

from autogen_core import AgentId

from orla_sdk import OrlaError
from orla_sdk.ir import Target
from orla_sdk.runtime import StageContext
from orla_sdk.serving import ServingSession


class TeamRuns:
    """What a served team's clients share: the session, the run in progress, whose turn it
    is, and the agent names behind AutoGen's agent types."""

    def __init__(self, session: ServingSession, team: str, names: Mapping[str, str],
                 nodes: Mapping[str, str]) -> None:
        self.session = session
        self.team = team
        self.names = dict(names)  # agent type -> agent name
        self.nodes = dict(nodes)  # agent name -> plan node id
        self.run_id: str | None = None
        self._turn = 0
        self._speaker: str | None = None
        self._failures: list[OrlaError] = []
        self._lock = threading.Lock()

    async def start(self) -> None:
        if not self.session.pool.started:
            await asyncio.to_thread(self.session.start)  # may start an embedded engine

    def begin(self) -> str:
        with self._lock:
            if self.run_id is not None:
                raise OrlaError(f"team {self.team!r} is already running; a team runs one task "
                                "at a time (serve another team for concurrent runs).")
            self.run_id = self._new_run_id()
            self._turn, self._speaker, self._failures = 0, None, []
            return self.run_id

    def end(self) -> OrlaError | None:
        """The run is over; returns the first orla error its calls raised, if any."""
        with self._lock:
            self.run_id = None
            return self._failures[0] if self._failures else None

    def failed(self, error: OrlaError) -> None:
        with self._lock:
            self._failures.append(error)

    def name_of(self, agent: AgentId) -> str:
        """An agent's name from its AgentChat id (type ``"<name>_<team id>"``, key the id)."""
        return self.names.get(agent.type) or agent.type.removesuffix(f"_{agent.key}")

    def unit(self, agent: str) -> tuple[StageContext, str, bool]:
        """The turn a call of ``agent`` belongs to: its context, its run, and whether that
        run is the call's own (made outside ``ServedTeam.run``)."""
        with self._lock:
            run_id, own = self.run_id, self.run_id is None
            if run_id is None:
                run_id = self._new_run_id()
            if agent != self._speaker or own:
                self._turn, self._speaker = self._turn + 1, agent
            turn = self._turn
        labels = {"team": self.team, "agent": agent, "run": run_id, "turn": turn}
        node_id = self.nodes.get(agent, f"agent:{agent}")
        return self.session.unit(run_id, f"{turn}:{agent}", node_id, labels), run_id, own

    async def close_own_run(self, run_id: str) -> None:
        self.session.finish_units(run_id)
        await self.session.acall(self.session.settle(run_id, "over"))

    def targets_of(self, agent: str | None) -> list[Target]:
        """The targets an agent's calls may go to (every target when the agent is unknown)."""
        plan = self.session.plan
        node_id = self.nodes.get(agent or "")
        if node_id is None:
            return [t for name in plan.mapping for t in plan.targets_of(name)]
        name = plan.logical_model(plan.node(node_id))
        return plan.targets_of(name) if name else []

    def _new_run_id(self) -> str:
        return f"{self.team}:{uuid.uuid4().hex[:12]}"
