"""An AutoGen AgentChat team as an orla plan: where its model clients sit, and the nodes
that draw it.

- The team becomes an orla plan: one stage node per agent that has a model client and one
  for the team's manager when it has one (the selector of a ``SelectorGroupChat``, named
  ``"selector"``), with a branch node for the choice of the next speaker and loop edges
  back to it. The passes map each agent to its backend and model (``models=`` by agent
  name, else the model its ``autogen_client(model=...)`` names, else ``default_model``),
  give the selector ``selector_priority`` (90 unless told) and decide cache spans. Agents
  without a model client (a ``UserProxyAgent``) make no calls for orla to serve and are
  left out of the plan; agents of nested teams are served as units the plan has no node for.
- The plan records the team for passes and diagrams (``orla.compile(team)``,
  ``orla.render(team, path)``); it cannot be run by ``orla.run``. Compiling a team leaves
  it as it is; only serving it replaces its model clients.

AgentChat 0.7 has no public accessors for a team's participants, its model client, or
the agent types it registers; the private attributes read here are marked where read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from autogen_agentchat.teams import BaseGroupChat
from autogen_core.models import ChatCompletionClient

import orla_sdk as orla
from orla_autogen.client import OrlaChatCompletionClient
from orla_sdk import OrlaError
from orla_sdk.ir import BackendSpec, BranchTest, Condition, Node, Param, Plan, StageSpec, TypeSpec
from orla_sdk.passes import Pass

NOT_RUNNABLE_REF = "orla_autogen.plan:not_runnable"
INPUT_ID = "input:task"
SELECTOR_PRIORITY = 90
MANAGER_NAMES = {"SelectorGroupChat": "selector", "MagenticOneGroupChat": "orchestrator"}


def not_runnable(*inputs: Any) -> NoReturn:
    """The body of every stage of a plan drawn from an AutoGen team."""
    raise OrlaError("this plan was made by orla from an AutoGen team: it records the team's "
                    "agents for passes and diagrams and cannot be run by orla.run; serve the "
                    "team and run the served team itself (await served.run(task=...)).")


def checked_team(team: Any, verb: str) -> BaseGroupChat:
    if not isinstance(team, BaseGroupChat):
        raise TypeError(f"{verb} takes an AutoGen AgentChat team (SelectorGroupChat, "
                        f"RoundRobinGroupChat, ...), not {type(team).__name__}.")
    return team


def compile_team(team: Any, *, backends: Sequence[BackendSpec] | None = None,
                 mapping: Mapping[str, Any] | None = None,
                 models: Mapping[str, str] | None = None, default_model: str | None = None,
                 name: str | None = None, passes: Sequence[Pass] | None = None,
                 selector_model: str | None = None,
                 selector_priority: int = SELECTOR_PRIORITY) -> Plan:
    """The team's plan, configured and annotated by ``orla.compile(plan, ...)``; the team
    is left as it is. ``selector_model`` is the logical model of the manager's calls (the
    selector's), ``selector_priority`` their queue priority."""
    group = checked_team(team, "orla.compile")
    seats = team_seats(group)
    chosen = chosen_models(group, models, selector_model)
    plan = team_plan(group, name or group.name, seats, chosen, selector_priority)
    return orla.compile(plan, backends=backends, mapping=mapping, default_model=default_model,
                        passes=passes)


# ---- the team's seats ---------------------------------------------------------------------
@dataclass(frozen=True)
class Seat:
    """Where a team keeps a model client: its owner, the agent name its calls carry, and
    the plan node it is drawn as (None for agents of nested teams)."""

    owner: Any
    agent: str
    client: ChatCompletionClient
    node: str | None


def manager_name(team: BaseGroupChat) -> str:
    return MANAGER_NAMES.get(type(team).__name__, "manager")


def model_client_of(owner: Any) -> ChatCompletionClient | None:
    # AssistantAgent and SelectorGroupChat keep their client in _model_client, unexposed
    client = getattr(owner, "_model_client", None)
    return client if isinstance(client, ChatCompletionClient) else None


def participants_of(team: BaseGroupChat) -> list[Any]:
    return list(team._participants)  # BaseGroupChat has no public accessor for them


def inner_team(agent: Any) -> BaseGroupChat | None:
    """The team an agent holds: a nested team, or a ``SocietyOfMindAgent``'s team."""
    # SocietyOfMindAgent keeps its team in _team and has no public accessor for it
    inner = agent if isinstance(agent, BaseGroupChat) else getattr(agent, "_team", None)
    return inner if isinstance(inner, BaseGroupChat) else None


def team_seats(team: BaseGroupChat, nested: bool = False) -> list[Seat]:
    """The model clients of a team, its participants and the teams nested in it."""
    seats: list[Seat] = []
    manager = manager_name(team)
    client = model_client_of(team)
    if client is not None:
        seats.append(Seat(team, manager, client, None if nested else f"manager:{manager}"))
    for agent in participants_of(team):
        client = model_client_of(agent)
        if client is not None:
            node = None if nested else f"agent:{agent.name}"
            seats.append(Seat(agent, agent.name, client, node))
        inner = inner_team(agent)
        if inner is not None:
            seats += team_seats(inner, nested=True)
    nodes = {seat.node for seat in seats}
    if f"manager:{manager}" in nodes and f"agent:{manager}" in nodes:
        raise OrlaError(f"team {team.name!r} has an agent named like its manager "
                        f"({manager!r}); rename that agent.")
    return seats


def agent_types(team: BaseGroupChat) -> dict[str, str]:
    """AgentChat's agent types (one per participant and the manager) -> agent names."""
    # the topic types are AgentChat's agent types; BaseGroupChat does not expose them
    names = {team._group_chat_manager_topic_type: manager_name(team)}
    for topic, agent in zip(team._participant_topic_types, participants_of(team), strict=True):
        names[topic] = agent.name
        inner = inner_team(agent)
        if inner is not None:
            names.update(agent_types(inner))
    return names


def chosen_models(team: BaseGroupChat, models: Mapping[str, str] | None,
                  selector_model: str | None) -> dict[str, str]:
    """Logical models by agent name: ``models=`` and the manager's ``selector_model``."""
    selector = {manager_name(team): selector_model} if selector_model else {}
    return {**(models or {}), **selector}


def model_of(seat: Seat, models: Mapping[str, str]) -> str | None:
    """A seat's logical model: chosen by name, else the one its ``autogen_client`` names."""
    hint = seat.client.model if isinstance(seat.client, OrlaChatCompletionClient) else None
    return models.get(seat.agent, hint)


# ---- the plan's nodes ---------------------------------------------------------------------
def team_plan(team: BaseGroupChat, name: str, seats: list[Seat], models: Mapping[str, str],
              selector_priority: int) -> Plan:
    """input -> [manager] -> next speaker -> each agent -> output, with loop edges from the
    agents back to the choice of the next speaker."""
    plan = Plan(name=name, runnable=False)
    plan.meta["autogen"] = {"team": type(team).__name__}
    nodes = [Node(id=INPUT_ID, kind="input", label="task", kwargs={"default": None})]
    decider = INPUT_ID
    for seat in seats:
        if seat.node is not None and seat.node.startswith("manager:"):
            _add_stage(plan, seat, model_of(seat, models), selector_priority)
            nodes.append(_stage_node(seat.node, seat.agent, [{"$ref": INPUT_ID}], []))
            decider = seat.node
    agents = [s for s in seats if s.node is not None and s.node.startswith("agent:")]
    branch = Node(id="branch:next", kind="branch", label="next speaker",
                  test=BranchTest(op="value"), args=[{"$ref": decider}],
                  choices=[s.agent for s in agents])
    nodes.append(branch)
    for seat in agents:
        assert seat.node is not None
        _add_stage(plan, seat, model_of(seat, models), None)
        guard = [Condition(branch=branch.id, choices=[seat.agent])]
        nodes.append(_stage_node(seat.node, seat.agent, [], [guard]))
    nodes.append(Node(id="output", kind="output", label="output",
                      args=[{"$ref": s.node} for s in agents]))
    back_to = decider if decider != INPUT_ID else branch.id
    plan.meta["loop_edges"] = [{"src": s.node, "dst": back_to, "label": "next turn"}
                               for s in agents]
    plan.nodes = nodes
    return plan


def _add_stage(plan: Plan, seat: Seat, model: str | None, priority: int | None) -> None:
    plan.stages[f"autogen:{seat.agent}"] = StageSpec(
        name=seat.agent, ref=NOT_RUNNABLE_REF, model=model, priority=priority, agent=seat.agent,
        params=[Param(name="inputs", kind="var_positional", required=False,
                      type=TypeSpec(kind="any"))],
        doc=f"AutoGen {type(seat.owner).__name__} {seat.agent!r}")


def _stage_node(node_id: str, agent: str, args: list[Any],
                guards: list[list[Condition]]) -> Node:
    return Node(id=node_id, kind="stage", label=agent, stage=f"autogen:{agent}", args=args,
                guards=guards)
