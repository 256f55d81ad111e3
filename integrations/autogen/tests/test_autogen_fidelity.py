"""A served team behaves as it does bare: each team is written as AutoGen's tutorials
write it, with autogen-ext's ``OpenAIChatCompletionClient``, and run twice on the same
llama.cpp engine, once bare and once served by orla, both through a recording tap in
front of the engine (``tests/engine_tap.py``). The runs must agree on the messages'
types and sources, the stream's event kinds, the kind of stop, and the settings each
call brought to the engine; every served call must be in the report, under its agent.

The model's wording is never compared. Temperature 0 and a seed keep SmolLM2 steady, and
small token limits keep the runs short."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
from autogen_agentchat.messages import BaseChatMessage
from autogen_agentchat.teams import BaseGroupChat, RoundRobinGroupChat, SelectorGroupChat
from autogen_core.models import ModelInfo
from autogen_ext.models.openai import OpenAIChatCompletionClient
from orla_autogen import ServedTeam

import orla_sdk as orla
from tests.engine_tap import EngineTap

MODEL = orla.backends.DEFAULT_LOCAL_MODEL
INFO = ModelInfo(vision=False, function_calling=True, json_output=True, family="unknown",
                 structured_output=True)
SEED = 7
# what a user sets on a client; orla writes the request's other fields itself, and they
# may differ from the bare client's (streaming, slots, and, where tools are emulated,
# response_format in place of tools)
USER_SETTINGS = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
                 "presence_penalty", "frequency_penalty")
TASK = "Where is my order 7? It has not arrived."
TOOL_EVENTS = {"ToolCallRequestEvent", "ToolCallExecutionEvent"}
TeamBuilder = Callable[[str], BaseGroupChat]


def engine_client(url: str, **settings: Any) -> OpenAIChatCompletionClient:
    return OpenAIChatCompletionClient(model=MODEL, base_url=f"{url}/v1", api_key="none",
                                      model_info=INFO, temperature=0, seed=SEED, **settings)


def lookup_order(order_id: str) -> str:
    """Look up the shipping status of an order."""
    return f"Order {order_id} shipped yesterday."


def selector_team_with_tools(url: str) -> SelectorGroupChat:
    clerk = AssistantAgent(
        "clerk", model_client=engine_client(url, max_tokens=24), tools=[lookup_order],
        description="Looks orders up.",
        system_message="You look orders up with your tools.")
    writer = AssistantAgent(
        "writer", model_client=engine_client(url, max_tokens=24),
        description="Writes the reply to the customer.",
        system_message="You write short replies to customers.")
    return SelectorGroupChat([clerk, writer], model_client=engine_client(url, max_tokens=8),
                             termination_condition=MaxMessageTermination(4),
                             max_selector_attempts=2)


def round_robin_team(url: str) -> RoundRobinGroupChat:
    planner = AssistantAgent(
        "planner", model_client=engine_client(url, max_tokens=16, stop=["\n\n"]),
        system_message="You plan the answer to a customer in one sentence.")
    critic = AssistantAgent(
        "critic", model_client=engine_client(url, max_tokens=16, stop=["\n\n"]),
        system_message="You review the plan. Say APPROVE when it is good.")
    return RoundRobinGroupChat(
        [planner, critic],
        termination_condition=TextMentionTermination("APPROVE") | MaxMessageTermination(5))


# ---- running a team, bare and served ------------------------------------------------------
async def streamed(team: BaseGroupChat | ServedTeam) -> list[Any]:
    return [event async for event in team.run_stream(task=TASK)]


def run_bare(build: TeamBuilder, tap: EngineTap) -> tuple[list[Any], list[dict[str, Any]]]:
    tap.clear()
    events = asyncio.run(streamed(build(tap.url)))
    return events, tap.chats()


def run_served(build: TeamBuilder, tap: EngineTap, *, native_tools: bool
               ) -> tuple[list[Any], list[dict[str, Any]], ServedTeam]:
    tap.clear()
    served = orla.serve(
        build(tap.url),
        backends=[orla.backends.llamacpp("local", url=tap.url, tool_calling=native_tools)],
        mapping={"smollm2": f"local/{MODEL}"}, default_model="smollm2")
    assert isinstance(served, ServedTeam)

    async def run() -> list[Any]:
        async with served:
            return await streamed(served)

    return asyncio.run(run()), tap.chats(), served


# ---- what is compared -----------------------------------------------------------------------
def kinds(events: list[Any]) -> list[str]:
    return [type(event).__name__ for event in events]


def result_of(events: list[Any]) -> TaskResult:
    assert isinstance(events[-1], TaskResult)
    return events[-1]


def as_answers(names: list[str]) -> list[str]:
    """Event kinds with an agent's tool round read as its answer: the call's events
    dropped, AutoGen's summary of the call taken as a text message."""
    return ["TextMessage" if name == "ToolCallSummaryMessage" else name for name in names
            if name not in TOOL_EVENTS]


def chat_messages(result: TaskResult) -> list[BaseChatMessage]:
    return [m for m in result.messages if isinstance(m, BaseChatMessage)]


def stop_kind(result: TaskResult) -> str:
    """The stop reason without its counts: which condition stopped the team."""
    return re.sub(r"\d+", "N", result.stop_reason or "")


def settings(chats: list[dict[str, Any]]) -> list[str]:
    """Each call's user-facing settings, as the engine received them, and whether it
    streamed."""
    return [json.dumps({**{k: body[k] for k in USER_SETTINGS if k in body},
                        "stream": bool(body.get("stream"))}, sort_keys=True)
            for body in chats]


def assert_every_call_is_attributed(served: ServedTeam, chats: list[dict[str, Any]],
                                    result: TaskResult) -> None:
    by_agent = served.report.to_json()["by_agent"]
    assert sum(totals["calls"] for totals in by_agent.values()) == len(chats)
    speakers = {m.source for m in chat_messages(result)} - {"user"}
    assert speakers <= set(by_agent)
    assert all(row.labels["agent"] in {*speakers, "selector"} for row in served.report.rows())


def assert_the_same_course(bare: list[Any], bare_chats: list[dict[str, Any]],
                           served: list[Any], served_chats: list[dict[str, Any]]) -> Any:
    """Event for event, speaker for speaker, the same stop and the same settings; the
    served run's result."""
    assert kinds(served) == kinds(bare)
    bare_result, served_result = result_of(bare), result_of(served)
    assert kinds(served_result.messages) == kinds(bare_result.messages)
    assert [m.source for m in served_result.messages] == [m.source for m in bare_result.messages]
    assert stop_kind(served_result) == stop_kind(bare_result)
    assert settings(served_chats) == settings(bare_chats)
    return served_result


# ---- the teams --------------------------------------------------------------------------------
def test_a_round_robin_team_with_a_termination_condition(engine_tap: EngineTap) -> None:
    bare, bare_chats = run_bare(round_robin_team, engine_tap)
    served, served_chats, team = run_served(round_robin_team, engine_tap, native_tools=False)

    served_result = assert_the_same_course(bare, bare_chats, served, served_chats)
    assert set(settings(bare_chats)) == {
        json.dumps({"max_tokens": 16, "seed": SEED, "stop": ["\n\n"], "stream": False,
                    "temperature": 0}, sort_keys=True)}
    assert_every_call_is_attributed(team, served_chats, served_result)



def test_a_selector_team_with_tools_the_engine_calls(engine_tap: EngineTap) -> None:
    """Tools passed through to the engine, as the bare client passes them: the same
    course, event for event."""
    bare, bare_chats = run_bare(selector_team_with_tools, engine_tap)
    served, served_chats, team = run_served(selector_team_with_tools, engine_tap,
                                            native_tools=True)

    served_result = assert_the_same_course(bare, bare_chats, served, served_chats)
    assert [bool(c.get("tools")) for c in served_chats] == [
        bool(c.get("tools")) for c in bare_chats]
    assert_every_call_is_attributed(team, served_chats, served_result)


def test_a_selector_team_with_tools_orla_emulates(engine_tap: EngineTap) -> None:
    """On an engine declared without tool calling, orla offers the tools through a JSON
    schema. The model then chooses between a tool call and an answer under a grammar,
    where bare it answered freely, so the agent with tools may call one where it answered
    bare (or the other way round): its turn is then AutoGen's tool-call summary after the
    call's events. All else must agree: who speaks, in what order, how many messages and
    calls, why the team stopped, and the settings every call carried."""
    bare, bare_chats = run_bare(selector_team_with_tools, engine_tap)
    served, served_chats, team = run_served(selector_team_with_tools, engine_tap,
                                            native_tools=False)

    assert as_answers(kinds(served)) == as_answers(kinds(bare))
    bare_result, served_result = result_of(bare), result_of(served)
    bare_messages, served_messages = chat_messages(bare_result), chat_messages(served_result)
    assert [m.source for m in served_messages] == [m.source for m in bare_messages]
    differing = {m.source for b, m in zip(bare_messages, served_messages, strict=True)
                 if type(m) is not type(b)}
    assert differing <= {"clerk"}  # only the agent with tools
    assert stop_kind(served_result) == stop_kind(bare_result)
    # the same settings on every call; emulation changes the request's response_format
    # and tools, which are not compared
    assert set(settings(served_chats)) == set(settings(bare_chats))
    assert len(served_chats) == len(bare_chats)
    emulated = [c for c in served_chats if c.get("response_format")]
    assert emulated and not any(c.get("tools") for c in served_chats)
    assert_every_call_is_attributed(team, served_chats, served_result)
