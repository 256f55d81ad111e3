"""``orla.compile(team)`` and ``orla.render(team, path)``: an AutoGen team's plan, drawn
without serving the team (its model clients stay as they are)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import SelectorGroupChat
from orla_autogen import OrlaChatCompletionClient, autogen_client

import orla_sdk as orla

AGENTS = ("planner", "coder", "critic")


def selector_team() -> SelectorGroupChat:
    return SelectorGroupChat(
        [AssistantAgent(name, model_client=autogen_client(model="light"),
                        description=f"the {name}") for name in AGENTS],
        model_client=autogen_client(max_tokens=8),
        termination_condition=MaxMessageTermination(4))


def clients_of(team: SelectorGroupChat) -> dict[str, Any]:
    clients = {p.name: getattr(p, "_model_client", None) for p in team._participants}
    return {**clients, "selector": team._model_client}


def test_compile_gives_a_node_per_agent_and_leaves_the_team_as_it_is() -> None:
    team = selector_team()
    before = clients_of(team)

    plan = orla.compile(team)

    assert isinstance(plan, orla.Plan) and not plan.runnable
    assert [n.id for n in plan.stage_nodes()] == [
        "manager:selector", *(f"agent:{name}" for name in AGENTS)]
    assert plan.node("manager:selector").meta["priority"]["value"] == 90
    after = clients_of(team)
    assert after.keys() == before.keys()
    assert all(after[name] is client for name, client in before.items())
    assert all(isinstance(c, OrlaChatCompletionClient) and c.runs is None
               for c in after.values())


def test_compile_takes_the_serving_options() -> None:
    team = selector_team()
    light = orla.backends.simulator("light", "smollm2-135m")
    heavy = orla.backends.simulator("heavy", "qwen3-8b")
    plan = orla.compile(team, backends=[light, heavy],
                        mapping={"light": "light/smollm2-135m", "heavy": "heavy/qwen3-8b"},
                        models={"coder": "heavy"}, selector_model="light",
                        selector_priority=70, name="tickets")

    assert plan.name == "tickets"
    assert plan.node("agent:coder").meta["mapping"]["backend"] == "heavy"
    assert plan.node("agent:planner").meta["mapping"]["backend"] == "light"
    assert plan.node("manager:selector").meta["priority"]["value"] == 70
    with pytest.raises(TypeError):
        orla.compile(team, tracer=None)  # a serving option: compile does not take it
    # the team can still be served after it was compiled
    served = orla.serve(team, backends=[light, heavy],
                        mapping={"light": "light/smollm2-135m", "heavy": "heavy/qwen3-8b"})
    served.close()


def test_compile_refuses_what_is_not_a_team() -> None:
    agent = AssistantAgent("solo", model_client=autogen_client())
    with pytest.raises(TypeError, match=r"orla\.compile takes an AutoGen AgentChat team"):
        orla.compile(agent)


def test_render_draws_the_team(tmp_path: Path) -> None:
    team = selector_team()
    written = orla.render(team, str(tmp_path / "t.dot"))

    dot = (tmp_path / "t.dot").read_text()
    assert written == str(tmp_path / "t.dot")
    assert dot.startswith("digraph") and "selector" in dot and "coder" in dot
