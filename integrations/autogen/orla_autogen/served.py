"""``orla.serve(team)``: an AutoGen AgentChat team whose model calls orla serves.

- ``serve_team`` compiles the team's plan (``orla_autogen.plan``) and puts an
  ``OrlaChatCompletionClient`` in place of every model client it finds (``AssistantAgent``
  and the selector keep theirs in ``_model_client``), so no agent is rebuilt and any
  client whose settings orla can read (``orla_autogen.settings``) works, its settings
  carried over: ``autogen_client()`` is a placeholder for teams built to be served. The
  team object is changed in place; serve it before its first run (a manager made by a
  run keeps the client it was made with).
- Each ``ServedTeam.run`` is one orla run (see ``orla_autogen.runs``), settled ``"over"``
  when the team stops; its spans go to the served team's tracer. How a run is cancelled
  and the session closed is ``orla_autogen.stopping``.
- The team's methods that run it (``run``, ``run_stream``) are served, its state methods
  pass through, its other methods are refused: none runs the team unserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams import BaseGroupChat
from autogen_core import CancellationToken

from orla_autogen.client import OrlaChatCompletionClient
from orla_autogen.plan import (
    SELECTOR_PRIORITY,
    Seat,
    agent_types,
    checked_team,
    chosen_models,
    compile_team,
    model_of,
    team_seats,
)
from orla_autogen.runs import TeamRuns
from orla_autogen.settings import agent_settings
from orla_autogen.stopping import (
    close_quietly,
    forget_cancelled_turns,
    run_token,
    settled,
    stream_settled,
)
from orla_sdk import BackendPool, OrlaError, Plan, Price, Report
from orla_sdk.agents import AgentPolicy
from orla_sdk.ir import BackendSpec
from orla_sdk.passes import Pass
from orla_sdk.serving import ServingSession

TeamEvent = BaseAgentEvent | BaseChatMessage | TaskResult
Task = str | BaseChatMessage | Sequence[BaseChatMessage] | None
SERVED = ("run", "run_stream")
PASSED_THROUGH = ("reset", "pause", "resume", "save_state", "load_state")

log = logging.getLogger("orla_autogen")


class ServedTeam:
    """An AutoGen team whose model calls orla serves; used like the team.

    ``run`` and ``run_stream`` are served; ``reset``, ``pause``, ``resume``, ``save_state``
    and ``load_state`` are the team's own; the team's attributes read through. Any other
    method of the team is refused (``served.team`` is the team itself).
    """

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

    # ---- served ---------------------------------------------------------------------------
    async def run(self, *, task: Task = None, cancellation_token: CancellationToken | None = None,
                  output_task_messages: bool = True) -> TaskResult:
        """One task, one orla run: the team's ``run``. Cancelled (by the token or by
        cancelling the awaiting task), the model call in flight is cancelled and the run
        settles before this returns."""
        run_id = await self._begin()
        token = run_token(cancellation_token)
        error: BaseException | None = None
        try:
            return await settled(self.team.run(
                task=task, cancellation_token=token,
                output_task_messages=output_task_messages), token)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self._end(run_id, error, token)

    async def run_stream(self, *, task: Task = None,
                         cancellation_token: CancellationToken | None = None,
                         output_task_messages: bool = True) -> AsyncGenerator[TeamEvent, None]:
        """The team's ``run_stream``: its messages and events, then the ``TaskResult``.
        Cancelled as ``run`` is; a caller that stops early stops the team the same way."""
        run_id = await self._begin()
        token = run_token(cancellation_token)
        error: BaseException | None = None
        events = stream_settled(self.team.run_stream(
            task=task, cancellation_token=token, output_task_messages=output_task_messages),
            token)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self._end(run_id, error, token)

    # ---- the team's own -------------------------------------------------------------------
    async def reset(self) -> None:
        await self.team.reset()

    async def pause(self) -> None:
        await self.team.pause()

    async def resume(self) -> None:
        await self.team.resume()

    async def save_state(self) -> Mapping[str, Any]:
        return await self.team.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        await self.team.load_state(state)

    def __getattr__(self, name: str) -> Any:
        team = self.__dict__.get("team")
        if team is None or name.startswith("__"):
            raise AttributeError(name)
        value = getattr(team, name)
        if inspect.isroutine(value):
            raise OrlaError(
                f"{type(team).__name__}.{name}() is not served: a served team serves "
                f"{', '.join(SERVED)} and passes {', '.join(PASSED_THROUGH)} through to the "
                f"team; call served.team.{name}(...) to use the team's own method, unserved.")
        return value

    # ---- closing --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the session: its engines and its loop (the team's clients start it again
        if the team runs after this). Best effort: a failure is logged, never raised."""
        close_quietly(self.session, self.plan.name)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> ServedTeam:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- runs -----------------------------------------------------------------------------
    async def _begin(self) -> str:
        await self.runs.start()
        return self.runs.begin()

    async def _end(self, run_id: str, error: BaseException | None,
                   token: CancellationToken) -> None:
        """Settle the run; an orla error behind the team's failure is raised as itself
        (AgentChat reports an agent's exception as a ``RuntimeError`` holding its text).
        A failure to settle is logged: the team's own outcome stands."""
        failure = self.runs.end()
        if token.is_cancelled():
            await forget_cancelled_turns(self.team)
        try:
            await self._settle(run_id)
        except Exception as exc:
            log.warning("team %r: run %s did not settle cleanly (%s: %s)", self.plan.name,
                        run_id, type(exc).__name__, exc)
        if isinstance(error, Exception) and failure is not None and failure is not error:
            raise failure from error

    async def _settle(self, run_id: str) -> None:
        self.session.finish_units(run_id)
        entries = await self.session.acall(self.session.settle(run_id, "over"))
        self.cache_log += [{**entry, "run": run_id} for entry in entries]
        if self.tracer is not None:
            self.report.export_spans(self.tracer, run=run_id)


def serve_team(team: Any, *, backends: Sequence[BackendSpec] | None = None,
               mapping: Mapping[str, Any] | None = None, models: Mapping[str, str] | None = None,
               default_model: str | None = None, prices: Mapping[str, Price] | None = None,
               tracer: Any = None, pool: BackendPool | None = None, name: str | None = None,
               passes: Sequence[Pass] | None = None,
               selector_model: str | None = None,
               selector_priority: int = SELECTOR_PRIORITY,
               create_args: Mapping[str, Mapping[str, Any]] | None = None,
               policies: Sequence[AgentPolicy | str] = ()) -> ServedTeam:
    """An AgentChat team (``SelectorGroupChat``, ``RoundRobinGroupChat``, ...) served by
    orla; see the module's docstring. ``selector_model`` is the logical model of the
    manager's calls (the selector's), ``selector_priority`` their queue priority.
    ``create_args`` gives agents' settings by agent name (``{"writer": {"max_tokens":
    64}}``): over those their clients hold, and in place of those of a client orla cannot
    read (see ``orla_autogen.settings``)."""
    group = checked_team(team, "orla.serve")
    if group._initialized:  # BaseGroupChat has no public accessor for whether it has run
        raise OrlaError(f"team {group.name!r} has run already, and its manager keeps the model "
                        "client it was made with; serve the team before its first run.")
    seats = team_seats(group)
    settings = _settings_of(seats, create_args or {})
    plan = compile_team(group, backends=backends, mapping=mapping, models=models,
                        default_model=default_model, name=name, passes=passes,
                        selector_model=selector_model, selector_priority=selector_priority)
    chosen = chosen_models(group, models, selector_model)
    unit_models = {s.agent: m for s in seats if (m := model_of(s, chosen)) is not None}
    session = ServingSession(plan, pool=pool, models=unit_models,
                             report=Report(prices, groups=("agent",)), policies=policies)
    nodes = {seat.agent: seat.node for seat in seats if seat.node is not None}
    runs = TeamRuns(session, plan.name, agent_types(group), nodes)
    for seat, args in zip(seats, settings, strict=True):
        # where AssistantAgent and the selector keep their client; neither has a setter
        seat.owner._model_client = OrlaChatCompletionClient(
            runs, agent=seat.agent, model=model_of(seat, chosen), create_args=args)
    return ServedTeam(group, runs, tracer=tracer)


def _settings_of(seats: Sequence[Seat], given: Mapping[str, Mapping[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Each seat's settings, read before the team is changed: a refusal leaves it as it
    was."""
    agents = {seat.agent for seat in seats}
    unknown = sorted(set(given) - agents)
    if unknown:
        raise OrlaError(f"create_args names {unknown}, which the team has no model client "
                        f"for; its agents with one are {sorted(agents)}.")
    return [agent_settings(seat.agent, seat.client, given.get(seat.agent)) for seat in seats]
