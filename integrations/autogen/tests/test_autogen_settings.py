"""A served team's calls carry the settings its model clients were built with
(``max_tokens``, ``temperature``, ``stop``, ...), whichever client that is; a client whose
settings orla cannot read is refused rather than served without them."""

from __future__ import annotations

from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.teams import SelectorGroupChat
from autogen_core.models import ChatCompletionClient, ModelInfo
from autogen_ext.models.openai import OpenAIChatCompletionClient
from autogen_ext.models.replay import ReplayChatCompletionClient
from autogen_scripted import serve_on_sims, served_run, sims
from orla_autogen import autogen_client

import orla_sdk as orla

INFO = ModelInfo(vision=False, function_calling=True, json_output=True, family="unknown",
                 structured_output=True)
AGENT_SETTINGS = {"max_tokens": 16, "temperature": 0, "top_p": 0.9, "stop": ["\n\n"],
                  "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2,
                  "extra_body": {"top_k": 5}}
SELECTOR_SETTINGS = {"max_completion_tokens": 8, "temperature": 0.5}


def openai_client(**settings: Any) -> OpenAIChatCompletionClient:
    """autogen-ext's client, as an app builds it (served, its base_url is never reached)."""
    return OpenAIChatCompletionClient(model="smollm2", base_url="http://127.0.0.1:9/v1",
                                      api_key="none", model_info=INFO, timeout=30, **settings)


def team_of(planner: ChatCompletionClient, critic: ChatCompletionClient,
            selector: ChatCompletionClient) -> SelectorGroupChat:
    return SelectorGroupChat(
        [AssistantAgent("planner", model_client=planner, description="the planner"),
         AssistantAgent("critic", model_client=critic, description="the critic")],
        model_client=selector, termination_condition=MaxMessageTermination(3),
        max_selector_attempts=2)


def test_the_settings_of_openai_clients_reach_the_engine() -> None:
    engines = sims()
    team = team_of(openai_client(**AGENT_SETTINGS), autogen_client(max_tokens=5, seed=3),
                   openai_client(**SELECTOR_SETTINGS))
    served = serve_on_sims(team, engines, models={})
    served_run(served, lambda: served.run(task="Plan a small CLI tool."))

    requests = engines["light"].requests
    selector = [r.params for r in requests if r.priority == 90]
    agents = [r.params for r in requests if r.priority != 90]
    assert selector and all(p == SELECTOR_SETTINGS for p in selector)
    # the selector named the critic, then only the planner was left
    assert agents == [{"max_tokens": 5, "seed": 3}, AGENT_SETTINGS]
    calls = {row.labels["agent"]: row.record.calls[0] for row in served.report.rows()}
    assert calls["planner"].completion_tokens <= 16  # the engine kept to the limit


def test_a_client_whose_settings_cannot_be_read_is_refused() -> None:
    replay = ReplayChatCompletionClient(["a plan"])
    team = team_of(replay, autogen_client(), autogen_client())

    with pytest.raises(orla.OrlaError, match=(
            r"agent 'planner'.*cannot read the settings.*ReplayChatCompletionClient.*"
            r"autogen_client\(max_tokens=.*create_args=\{'planner'")):
        serve_on_sims(team, sims())
    assert team._participants[0]._model_client is replay  # the team is left as it was


def test_settings_given_to_serve_stand_for_a_client_and_override_one() -> None:
    engines = sims()
    team = team_of(ReplayChatCompletionClient(["a plan"]), openai_client(max_tokens=64),
                   autogen_client())
    served = serve_on_sims(team, engines, create_args={
        "planner": {"max_tokens": 12}, "critic": {"temperature": 0.2}})
    served_run(served, lambda: served.run(task="Plan a small CLI tool."))

    agents = [r.params for r in engines["light"].requests if r.priority != 90]
    assert agents == [{"max_tokens": 64, "temperature": 0.2}, {"max_tokens": 12}]


def test_settings_for_an_agent_the_team_lacks_are_an_error() -> None:
    team = team_of(autogen_client(), autogen_client(), autogen_client())
    with pytest.raises(orla.OrlaError, match=r"create_args names \['writer'\].*'critic', "
                                             r"'planner', 'selector'"):
        serve_on_sims(team, sims(), create_args={"writer": {"max_tokens": 8}})


def test_settings_that_are_orlas_to_set_are_refused() -> None:
    client = openai_client(max_tokens=16, response_format={"type": "json_object"})
    team = team_of(client, autogen_client(), autogen_client())
    with pytest.raises(orla.OrlaError, match=r"agent 'planner'.*\['response_format'\] are "
                                             r"orla's to set.*output_content_type"):
        serve_on_sims(team, sims())
