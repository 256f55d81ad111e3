"""``orla.serve(team)``: an AutoGen AgentChat team whose model calls orla serves.

- ``serve_team`` compiles the team's plan (``orla_autogen.plan``) and puts an
  ``OrlaChatCompletionClient`` in place of every model client it finds (``AssistantAgent``
  and the selector keep theirs in ``_model_client``), so no agent is rebuilt and any
  client the team was built with works: ``autogen_client()`` is a placeholder for teams
  built to be served. The team object is changed in place; serve it before its first run
  (a manager made by a run keeps the client it was made with).
- Each ``ServedTeam.run`` is one orla run (see ``orla_autogen.runs``), settled ``"over"``
  when the team stops; its spans go to the served team's tracer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams import BaseGroupChat
from autogen_core import CancellationToken
from autogen_core.models import ChatCompletionClient

from orla_autogen.client import OrlaChatCompletionClient
from orla_autogen.plan import (
    SELECTOR_PRIORITY,
    agent_types,
    checked_team,
    chosen_models,
    compile_team,
    model_of,
    team_seats,
)
from orla_autogen.runs import TeamRuns
from orla_sdk import BackendPool, OrlaError, Plan, Price, Report
from orla_sdk.agents import AgentPolicy
from orla_sdk.ir import BackendSpec
from orla_sdk.passes import Pass
from orla_sdk.serving import ServingSession

TeamEvent = BaseAgentEvent | BaseChatMessage | TaskResult
Task = str | BaseChatMessage | Sequence[BaseChatMessage] | None


class ServedTeam:
    """An AutoGen team whose model calls orla serves; used like the team."""

    def __init__(self, team: BaseGroupChat, runs: TeamRuns, *, tracer: Any = None) -> None:
        self.team = team
        self.runs = runs
        self.tracer = tracer  # an OpenTelemetry Tracer: each run's spans go there
        self.cache_log: list[dict[str, Any]] = []

    @property
    def session(self) -> ServingSession:
        return self.runs.session

    @property
    def plan(self) -> Plan:
        return self.session.plan

    @property
    def report(self) -> Report:
        return self.session.report

    async def run(self, *, task: Task = None, cancellation_token: CancellationToken | None = None,
                  output_task_messages: bool = True) -> TaskResult:
        """One task, one orla run: the team's ``run``."""
        run_id = await self._begin()
        error: BaseException | None = None
        try:
            return await self.team.run(task=task, cancellation_token=cancellation_token,
                                       output_task_messages=output_task_messages)
        except Exception as exc:
            error = exc
            raise
        finally:
            await self._end(run_id, error)

    async def run_stream(self, *, task: Task = None,
                         cancellation_token: CancellationToken | None = None,
                         output_task_messages: bool = True) -> AsyncGenerator[TeamEvent, None]:
        """The team's ``run_stream``: its messages and events, then the ``TaskResult``."""
        run_id = await self._begin()
        error: BaseException | None = None
        events = self.team.run_stream(task=task, cancellation_token=cancellation_token,
                                      output_task_messages=output_task_messages)
        try:
            async with contextlib.aclosing(events):  # a caller that stops early stops the team
                async for event in events:
                    yield event
        except Exception as exc:
            error = exc
            raise
        finally:
            await self._end(run_id, error)

    async def reset(self) -> None:
        await self.team.reset()

    async def save_state(self) -> Mapping[str, Any]:
        return await self.team.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self.team.load_state(state)

    def close(self) -> None:
        """Stop the session: its engines and its loop (the team's clients start it again
        if the team runs after this)."""
        self.session.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.session.close)

    async def __aenter__(self) -> ServedTeam:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.team, name)

    async def _begin(self) -> str:
        await self.runs.start()
        return self.runs.begin()

    async def _end(self, run_id: str, error: BaseException | None) -> None:
        """Settle the run; an orla error behind the team's failure is raised as itself
        (AgentChat reports an agent's exception as a ``RuntimeError`` holding its text)."""
        failure = self.runs.end()
        self.session.finish_units(run_id)
        entries = await self.session.acall(self.session.settle(run_id, "over"))
        self.cache_log += [{**entry, "run": run_id} for entry in entries]
        if self.tracer is not None:
            self.report.export_spans(self.tracer, run=run_id)
        if error is not None and failure is not None and failure is not error:
            raise failure from error


def serve_team(team: Any, *, backends: Sequence[BackendSpec] | None = None,
               mapping: Mapping[str, Any] | None = None, models: Mapping[str, str] | None = None,
               default_model: str | None = None, prices: Mapping[str, Price] | None = None,
               tracer: Any = None, pool: BackendPool | None = None, name: str | None = None,
               passes: Sequence[Pass] | None = None,
               selector_model: str | None = None,
               selector_priority: int = SELECTOR_PRIORITY,
               policies: Sequence[AgentPolicy | str] = ()) -> ServedTeam:
    """An AgentChat team (``SelectorGroupChat``, ``RoundRobinGroupChat``, ...) served by
    orla; see the module's docstring. ``selector_model`` is the logical model of the
    manager's calls (the selector's), ``selector_priority`` their queue priority."""
    group = checked_team(team, "orla.serve")
    if group._initialized:  # BaseGroupChat has no public accessor for whether it has run
        raise OrlaError(f"team {group.name!r} has run already, and its manager keeps the model "
                        "client it was made with; serve the team before its first run.")
    plan = compile_team(group, backends=backends, mapping=mapping, models=models,
                        default_model=default_model, name=name, passes=passes,
                        selector_model=selector_model, selector_priority=selector_priority)
    seats = team_seats(group)
    chosen = chosen_models(group, models, selector_model)
    unit_models = {s.agent: m for s in seats if (m := model_of(s, chosen)) is not None}
    session = ServingSession(plan, pool=pool, models=unit_models,
                             report=Report(prices, groups=("agent",)), policies=policies)
    nodes = {seat.agent: seat.node for seat in seats if seat.node is not None}
    runs = TeamRuns(session, plan.name, agent_types(group), nodes)
    for seat in seats:
        # where AssistantAgent and the selector keep their client; neither has a setter
        seat.owner._model_client = OrlaChatCompletionClient(
            runs, agent=seat.agent, model=model_of(seat, chosen),
            create_args=_create_args_of(seat.client))
    return ServedTeam(group, runs, tracer=tracer)


def _create_args_of(client: ChatCompletionClient) -> dict[str, Any]:
    return dict(client.create_args) if isinstance(client, OrlaChatCompletionClient) else {}
