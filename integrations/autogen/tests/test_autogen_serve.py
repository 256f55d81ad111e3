"""``orla.serve(team)``: an AutoGen team's model calls served by orla, attributed to the
agent that makes them. Fast tests run on in-process simulated engines (on one virtual
clock); the last two run a team and the example on the real llama.cpp engine."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import ModelClientStreamingChunkEvent
from autogen_agentchat.teams import RoundRobinGroupChat, SelectorGroupChat
from autogen_core import FunctionCall, Image
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    UserMessage,
)
from autogen_core.tools import FunctionTool
from autogen_scripted import (
    ask,
    client_of,
    selector_team,
    serve_on_sims,
    served_run,
    sims,
)
from orla_autogen import ServedTeam, autogen_client
from pydantic import BaseModel

import orla_sdk as orla
from examples import autogen_team
from orla_sdk.backends.engine import LocalEngine, free_port
from orla_sdk.errors import BackendError

MODEL = orla.backends.DEFAULT_LOCAL_MODEL


# ---- a selector team on simulated engines ------------------------------------------------
def test_the_selector_and_each_agent_are_served_on_their_own_backends() -> None:
    engines, team = sims(), selector_team()
    served = serve_on_sims(team, engines, selector_model="light")
    result = served_run(served, lambda: served.run(task="Plan a small CLI tool."))

    assert [m.source for m in result.messages] == ["user", "critic", "coder", "critic"]
    by_agent = served.report.to_json()["by_agent"]
    assert set(by_agent) == {"selector", "critic", "coder"}
    # the selector, at priority 90, on the light engine; coder on heavy; critic on light
    light, heavy = engines["light"].priorities(), engines["heavy"].priorities()
    assert light.count(90) == by_agent["selector"]["calls"] == 6  # 3 turns x 2 attempts
    assert light.count(50) == by_agent["critic"]["calls"] == 2
    assert heavy == [50] * by_agent["coder"]["calls"] and heavy
    selector = served.plan.node("manager:selector")
    assert selector.meta["priority"]["value"] == 90
    assert selector.meta["mapping"]["backend"] == "light"
    assert served.plan.node("agent:coder").meta["mapping"]["backend"] == "heavy"


def test_a_turn_is_one_unit_and_the_report_adds_up() -> None:
    engines, team = sims(), selector_team()
    served = serve_on_sims(team, engines)
    served_run(served, lambda: served.run(task="Plan a small CLI tool."))

    rows = served.report.rows()
    assert [r.labels["agent"] for r in rows] == ["selector", "critic", "selector", "coder",
                                                 "selector", "critic"]
    assert [len(r.record.calls) for r in rows] == [2, 1, 2, 1, 2, 1]
    assert len({r.labels["run"] for r in rows}) == 1
    # each agent holds a slot of its own in the run, call after call: the selector's and
    # the critic's contexts (their own system prompts) do not evict each other
    light_slots = {agent: {c.slot for r in rows if r.labels["agent"] == agent
                           for c in r.record.calls if c.backend == "light"}
                   for agent in ("selector", "critic")}
    assert all(len(slots) == 1 for slots in light_slots.values())
    assert light_slots["selector"] != light_slots["critic"]
    assert all(r.labels["team"] == served.plan.name for r in rows)
    report = served.report.to_json()
    for agent, totals in report["by_agent"].items():
        calls = [c for r in served.report.rows(agent=agent) for c in r.record.calls]
        assert totals["calls"] == len(calls)
        assert totals["prompt_tokens"] == sum(c.prompt_tokens for c in calls) > 0
    for key in ("calls", "prompt_tokens", "completion_tokens"):
        assert report["total"][key] == sum(t[key] for t in report["by_agent"].values())
    usage = client_of(team, "coder").total_usage()
    assert usage.prompt_tokens == report["by_agent"]["coder"]["prompt_tokens"]
    assert usage.completion_tokens == report["by_agent"]["coder"]["completion_tokens"]


def test_run_stream_streams_the_agents_text_and_ends_with_the_result() -> None:
    engines, team = sims(), selector_team(stream=True)
    served = serve_on_sims(team, engines)

    async def collect() -> list[Any]:
        return [event async for event in served.run_stream(task="Plan a small CLI tool.")]

    events = served_run(served, collect)
    chunks = [e for e in events if isinstance(e, ModelClientStreamingChunkEvent)]
    assert {c.source for c in chunks} == {"critic", "coder"}
    assert isinstance(events[-1], TaskResult)
    assert len(events[-1].messages) == 4
    assert served.report.to_json()["total"]["calls"] == 9


def test_a_round_robin_team_has_no_selector() -> None:
    engines = sims()
    team = RoundRobinGroupChat(
        [AssistantAgent(n, model_client=autogen_client()) for n in ("planner", "coder")],
        termination_condition=MaxMessageTermination(3))
    served = serve_on_sims(team, engines)
    served_run(served, lambda: served.run(task="Plan a small CLI tool."))

    assert [n.id for n in served.plan.stage_nodes()] == ["agent:planner", "agent:coder"]
    assert {a: t["calls"] for a, t in served.report.to_json()["by_agent"].items()} == {
        "planner": 1, "coder": 1}


def test_each_run_is_an_orla_run_with_its_spans() -> None:
    engines, tracer = sims(), FakeTracer()
    served = serve_on_sims(selector_team(messages=2), engines, tracer=tracer)

    async def twice() -> None:
        await served.run(task="one")
        await served.reset()
        await served.run(task="two")

    served_run(served, twice)
    runs = {r.labels["run"] for r in served.report.rows()}
    assert len(runs) == 2
    # each run ended "over". The first run's end saved each light agent's context (the
    # selector's and each light agent's own) as its template and left it in the slot; the
    # second run's contexts of those agents took those slots, with nothing to restore; its
    # end restored each agent's template over its context (saved only every 16th run)
    assert {e["run"] for e in served.cache_log} == runs
    actions: dict[str, list[str]] = {}
    for entry in served.cache_log:
        actions.setdefault(entry["decision"], []).append(entry["action"])
    assert set(actions) == {"flush", "keep", "restore"}
    assert len(actions["keep"]) == len(actions["restore"]) == len(actions["flush"]) > 0
    assert all(re.fullmatch(r"save slot \d+ as \w+'s template \(\d+ tokens\) and leave it there",
                            action) for action in actions["keep"])
    assert all(re.match(r"none: slot \d+ holds \w+'s template already", action)
               for action in actions["restore"])
    assert all(re.fullmatch(r"restore \w+'s template into slot \d+ \(\d+ tokens\) and leave "
                            r"it there", action) for action in actions["flush"])
    assert tracer.names.count("orla.unit manager:selector") == 2
    assert tracer.names.count("chat smollm2-135m") == served.report.to_json()["total"]["calls"]


# ---- the client on its own ---------------------------------------------------------------
def test_create_stream_yields_text_then_the_result_outside_a_team() -> None:
    engines, team = sims(), selector_team()
    served = serve_on_sims(team, engines)
    client = client_of(team, "planner")

    async def stream() -> list[str | CreateResult]:
        return [item async for item in client.create_stream(ask("Say hello."))]

    items = served_run(served, stream)
    *pieces, result = items
    assert isinstance(result, CreateResult) and pieces
    assert "".join(str(p) for p in pieces) == result.content
    assert result.usage.prompt_tokens > 0 and not result.cached
    # no message handler: the client's own agent, in a run of its own
    (row,) = served.report.rows()
    assert row.labels["agent"] == "planner" and len(row.record.calls) == 1


def lookup(order_id: str) -> str:
    """Look an order up."""
    return f"order {order_id}: shipped"


@pytest.mark.parametrize("native", [True, False])
def test_tool_calls_come_back_as_function_calls(native: bool) -> None:
    engines, team = sims(), selector_team()
    served = serve_on_sims(team, engines, tool_calling=native)
    client = client_of(team, "planner")
    tool = FunctionTool(lookup, description="Look an order up.")

    async def two_rounds() -> tuple[CreateResult, CreateResult]:
        first = await client.create(ask("Where is order 7?"), tools=[tool],
                                    tool_choice="required")
        assert isinstance(first.content, list)
        results = FunctionExecutionResultMessage(content=[FunctionExecutionResult(
            content="shipped", name="lookup", call_id=first.content[0].id)])
        history = [*ask("Where is order 7?"),
                   AssistantMessage(content=first.content, source="planner"), results]
        return first, await client.create(history, tools=[tool], tool_choice="none")

    first, second = served_run(served, two_rounds)
    (call,) = first.content
    assert isinstance(call, FunctionCall) and call.name == "lookup"
    assert "order_id" in json.loads(call.arguments)
    assert first.finish_reason == "function_calls"
    assert isinstance(second.content, str) and second.content
    request, follow_up = engines["light"].requests
    if native:
        assert request.tools and request.params["tool_choice"] == "required"
        assert [m["role"] for m in follow_up.messages] == ["user", "assistant", "tool"]
    else:  # emulated: a JSON schema that holds the call, and no tool roles in the history
        assert not request.tools and request.json_schema is not None
        assert "anyOf" in request.json_schema
        assert [m["role"] for m in follow_up.messages] == ["user", "assistant", "user"]
    assert follow_up.json_schema is None and not follow_up.tools


class Verdict(BaseModel):
    approved: bool
    reason: str


def test_structured_output_is_constrained_by_the_schema() -> None:
    engines, team = sims(), selector_team()
    served = serve_on_sims(team, engines)
    result = served_run(served, lambda: client_of(team, "critic").create(
        ask("Approve this plan?"), json_output=Verdict))

    assert isinstance(result.content, str)
    Verdict.model_validate_json(result.content)
    assert engines["light"].requests[0].json_schema == Verdict.model_json_schema()


def test_model_info_follows_the_backend() -> None:
    team = selector_team()
    serve_on_sims(team, sims(), tool_calling=False).close()
    info = client_of(team, "planner").model_info  # tool calls emulated through JSON schemas
    assert info["function_calling"] and info["json_output"] and not info["vision"]
    assert info["family"] == "unknown"
    client = client_of(team, "planner")
    assert 0 < client.count_tokens(ask("hello " * 40)) < client.remaining_tokens(ask("hi"))


# ---- the team's methods ------------------------------------------------------------------
SERVED_METHODS = ("run", "run_stream")
PASSED_THROUGH = ("reset", "pause", "resume", "save_state", "load_state")


def test_every_method_of_the_team_is_served_passed_through_or_refused() -> None:
    team = selector_team()
    served = serve_on_sims(team, sims())
    methods = {name for name, value in inspect.getmembers(team)
               if not name.startswith("_") and inspect.isroutine(value)}
    assert methods >= {*SERVED_METHODS, *PASSED_THROUGH}
    for name in methods:
        if name in SERVED_METHODS or name in PASSED_THROUGH:
            assert name in vars(ServedTeam), f"{name} is not the served team's own"
            continue
        with pytest.raises(orla.OrlaError, match=rf"{name}\(\) is not served.*served\.team"):
            getattr(served, name)
    # plain attributes read through
    assert (served.name, served.description) == (team.name, team.description)
    assert served.component_type == "team"
    served.close()


def test_state_methods_pass_through_to_the_team() -> None:
    engines, team = sims(), selector_team(messages=2)
    served = serve_on_sims(team, engines)

    async def run_save_reset_load() -> tuple[Any, Any, Any]:
        await served.run(task="Plan a small CLI tool.")
        state = await served.save_state()
        await served.reset()
        cleared = await served.save_state()
        await served.load_state(state)
        return state, cleared, await team.save_state()

    state, cleared, loaded = served_run(served, run_save_reset_load)
    thread = state["agent_states"]["SelectorGroupChatManager"]["message_thread"]
    assert len(thread) == 2
    assert cleared["agent_states"]["SelectorGroupChatManager"]["message_thread"] == []
    assert loaded == state


# ---- failures ----------------------------------------------------------------------------
def test_a_backend_that_is_down_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orla_sdk.runtime.pool.ENGINE_DOWN_S", 0.0)  # no wait for it to be up
    down = orla.backends.openai_compatible("down", f"http://127.0.0.1:{free_port()}/v1")
    served = orla.serve(selector_team(), backends=[down], mapping={"m": "down/gone"},
                        default_model="m")
    assert isinstance(served, ServedTeam)
    with pytest.raises(BackendError, match=r"backend 'down': cannot reach .*is the engine"):
        served_run(served, lambda: served.run(task="anything"))


def test_misuse_is_a_clear_error() -> None:
    with pytest.raises(orla.OrlaError, match=r"not served yet.*orla\.serve\(team"):
        asyncio.run(autogen_client().create(ask("hi")))
    with pytest.raises(ValueError, match=r"\['response_format'\] are orla's to set"):
        autogen_client(model="light", response_format={"type": "json_object"})
    team = selector_team()
    served = serve_on_sims(team, sims())
    image = Image.from_base64("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
                              "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    with pytest.raises(orla.OrlaError, match="holds an image"):
        served_run(served, lambda: client_of(team, "planner").create(
            [UserMessage(content=["look", image], source="user")]))


def test_json_output_on_a_backend_without_json_schema_is_refused() -> None:
    plain = orla.backends.openai_compatible("plain", "http://127.0.0.1:9/v1",
                                            tool_calling=False, json_schema=False)
    team = selector_team()
    served = orla.serve(team, backends=[plain], mapping={"m": "plain/x"}, default_model="m")
    assert isinstance(served, ServedTeam)
    assert client_of(team, "critic").model_info["function_calling"] is False
    with pytest.raises(orla.OrlaError, match=r"backend 'plain' cannot constrain output"):
        served_run(served, lambda: client_of(team, "critic").create(
            ask("hi"), json_output=Verdict))


# ---- the real engine ---------------------------------------------------------------------
def llama(engine: LocalEngine) -> dict[str, Any]:
    return {"backends": [orla.backends.llamacpp("local", url=engine.url)],
            "mapping": {"light": f"local/{MODEL}", "heavy": f"local/{MODEL}"}}


def test_a_selector_team_on_llama_cpp(llama_engine: LocalEngine) -> None:
    # SmolLM2-135M seldom names a valid agent: the selector retries, then AgentChat falls
    # back to the first participant; after the first turn only one candidate is left.
    team = SelectorGroupChat(
        [AssistantAgent(name, model_client=autogen_client(max_tokens=24),
                        description=f"the {name}") for name in ("triage", "writer")],
        model_client=autogen_client(max_tokens=8),
        termination_condition=MaxMessageTermination(4))
    served = orla.serve(team, **llama(llama_engine), default_model="light")
    assert isinstance(served, ServedTeam)
    result = served_run(served, lambda: served.run(task="My card was charged twice."))

    assert len(result.messages) == 4
    by_agent = served.report.to_json()["by_agent"]
    assert set(by_agent) == {"selector", "triage", "writer"}
    assert all(t["calls"] > 0 and t["prompt_tokens"] > 0 for t in by_agent.values())
    calls = [c for r in served.report.rows() for c in r.record.calls]
    assert {c.backend for c in calls} == {"local"}
    assert all(c.slot is not None for c in calls)  # every call on the run's slot


def test_the_example_runs_on_llama_cpp(llama_engine: LocalEngine,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    autogen_team.main(["--ticket", "My invoice is wrong."], **llama(llama_engine))

    out = capsys.readouterr().out
    transcript, report = out.split(autogen_team.REPORT_MARKER)
    assert transcript.startswith("[user] My invoice is wrong.")
    assert len(transcript.strip().splitlines()) >= 4
    by_agent = json.loads(report)
    assert set(by_agent) == {"selector", "triage", "writer"}
    assert all(t["calls"] > 0 and t["prompt_tokens"] > 0 for t in by_agent.values())


# ---- helpers -----------------------------------------------------------------------------
class FakeSpan:
    def end(self, end_time: int | None = None) -> None:
        pass


class FakeTracer:
    """Keeps the names of the spans started with it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def start_span(self, name: str, **_: Any) -> FakeSpan:
        self.names.append(name)
        return FakeSpan()
