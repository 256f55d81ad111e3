"""orla.compile and orla.render on LangGraph apps, through the adapter (no model calls)."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import pytest
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from syrupy.assertion import SnapshotAssertion

import orla_sdk as orla
from orla_sdk.ir import Condition
from orla_sdk.render import plan_to_dot

SIM = orla.backends.simulator("sim", clock="virtual")
MAPPING = {"default": "sim/qwen3-8b", "light": "sim/qwen3-8b"}


class State(TypedDict, total=False):
    text: str
    items: list[str]
    done: Annotated[list[str], operator.add]


def step(state: State) -> dict[str, Any]:
    return {}


def route(state: State) -> Literal["tools", "answer"]:
    return "answer"


def fan_out(state: State) -> list[Send]:
    return [Send("worker", {"text": item}) for item in state.get("items", [])]


def triage_app() -> Any:
    graph = StateGraph(State)
    graph.add_node("classify", step, metadata={"orla": {"model": "light", "priority": 80}})
    graph.add_node("tools", step)
    graph.add_node("answer", step, metadata={"orla": {"cache": "preserve"}})
    graph.add_edge(START, "classify")
    graph.add_conditional_edges("classify", route)
    graph.add_edge("tools", "answer")
    graph.add_edge("answer", END)
    return graph.compile(name="triage")


def agent_app() -> Any:
    graph = StateGraph(State)
    graph.add_node("agent", step)
    graph.add_node("tools", step)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, {"tools": "tools", "answer": END})
    graph.add_edge("tools", "agent")
    return graph.compile(name="agent")


def nested_app() -> Any:
    inner = StateGraph(State)
    inner.add_node("draft", step)
    inner.add_node("check", step)
    inner.add_edge(START, "draft")
    inner.add_edge("draft", "check")
    inner.add_edge("check", END)
    graph = StateGraph(State)
    graph.add_node("plan", step)
    graph.add_node("write", inner.compile())
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "write")
    graph.add_edge("write", END)
    return graph.compile(name="nested")


def send_app() -> Any:
    graph = StateGraph(State)
    graph.add_node("split", step)
    graph.add_node("worker", step)
    graph.add_node("reduce", step)
    graph.add_edge(START, "split")
    graph.add_conditional_edges("split", fan_out, ["worker"])
    graph.add_edge("worker", "reduce")
    graph.add_edge("reduce", END)
    return graph.compile(name="map_reduce")


@task
def shout(text: str) -> str:
    return text.upper()


@entrypoint()
def functional(text: str) -> str:
    return shout(text).result()


def compiled(app: Any, **kwargs: Any) -> orla.Plan:
    return orla.compile(app, backends=[SIM], mapping=MAPPING, default_model="default",
                                **kwargs)


def test_conditional_edges_become_a_guarded_branch() -> None:
    plan = compiled(triage_app())
    assert plan.name == "triage"
    assert [n.id for n in plan.nodes] == [
        "input:state", "classify", "branch:classify", "tools", "answer", "output"]
    branch = plan.node("branch:classify")
    assert branch.kind == "branch" and branch.label == "route"
    assert branch.choices == ["answer", "tools"]
    assert branch.test is not None and branch.test.fn == "test_langgraph_plan:route"
    assert plan.node("tools").guards == [
        [Condition(branch="branch:classify", choices=["tools"])]]
    # answer is reached by the branch and by a plain edge from tools: it runs either way
    assert plan.node("answer").guards == [
        [], [Condition(branch="branch:classify", choices=["answer"])]]
    assert plan.node("answer").args == [{"$ref": "tools"}]
    assert plan.node("output").args == [{"$ref": "answer"}]
    assert plan.runnable is False


def test_node_metadata_and_models_argument_map_stages() -> None:
    plan = compiled(triage_app(), models={"tools": "light"})
    logical = {n.id: n.meta["mapping"]["logical"] for n in plan.stage_nodes()}
    assert logical == {"classify": "light", "tools": "light", "answer": "default"}
    assert plan.node("classify").meta["priority"] == {
        "value": 80, "source": "static", "critical_path": 3}
    assert plan.node("tools").meta["priority"]["source"] == "graph"
    assert plan.node("answer").meta["cache"]["decision"] == "preserve"
    assert plan.node("answer").meta["cache"]["reason"] == 'stage hint cache="preserve"'
    assert plan.node("classify").meta["mapping"]["backend"] == "sim"
    assert plan.meta["cache_spans"]
    assert plan.stage_of(plan.node("classify")).site is not None


def test_models_argument_wins_over_metadata() -> None:
    plan = compiled(triage_app(), models={"classify": "default"})
    assert plan.node("classify").meta["mapping"]["logical"] == "default"


def test_without_backends_every_model_runs_on_the_embedded_engine() -> None:
    plan = orla.compile(triage_app())
    assert [b.kind for b in plan.backends] == ["llamacpp"]
    assert sorted(plan.mapping) == ["default", "light"]


def test_bad_orla_metadata_is_a_clear_error() -> None:
    graph = StateGraph(State)
    graph.add_node("x", step, metadata={"orla": {"priority": "high"}})
    graph.add_edge(START, "x")
    with pytest.raises(orla.OrlaError, match=r"priority \(int 0\.\.100\)"):
        orla.compile(graph.compile())
    graph = StateGraph(State)
    graph.add_node("x", step, metadata={"orla": {"model": "nope"}})
    graph.add_edge(START, "x")
    with pytest.raises(orla.PlanValidationError, match="unknown model 'nope'"):
        compiled(graph.compile())


def test_a_tool_loop_is_drawn_as_a_loop_edge_not_a_cycle() -> None:
    plan = compiled(agent_app())
    assert [n.id for n in plan.nodes] == [
        "input:state", "agent", "branch:agent", "tools", "output"]
    assert plan.meta["loop_edges"] == [{"src": "tools", "dst": "agent", "label": "loop"}]
    assert plan.node("tools").args == []  # the back edge is no dependency
    assert plan.node("output").guards == [
        [Condition(branch="branch:agent", choices=["output"])]]
    assert plan.node("agent").meta["priority"]["critical_path"] == 2
    dot = plan_to_dot(plan)
    assert 'tools -> agent [label=loop color="#b7410e" constraint=false' in dot


def test_a_conditional_edge_back_into_the_loop_is_labelled_with_its_choice() -> None:
    graph = StateGraph(State)
    graph.add_node("think", step)
    graph.add_node("answer", step)
    graph.add_edge(START, "think")
    graph.add_conditional_edges("think", route, {"tools": "think", "answer": "answer"})
    graph.add_edge("answer", END)
    plan = compiled(graph.compile())
    assert plan.meta["loop_edges"] == [
        {"src": "branch:think", "dst": "think", "label": "think (loop)"}]
    assert plan.node("branch:think").choices == ["answer", "think"]
    assert plan.node("think").guards == []


def test_subgraph_nodes_keep_their_xray_prefix() -> None:
    plan = compiled(nested_app())
    assert [n.id for n in plan.stage_nodes()] == ["plan", "write:draft", "write:check"]
    assert plan.node("write:check").args == [{"$ref": "write:draft"}]
    assert plan.node("write:draft").args == [{"$ref": "plan"}]
    assert plan.node("output").args == [{"$ref": "write:check"}]
    assert plan.stage_of(plan.node("write:draft")).name == "draft"
    # all on one target, each reading the one before: one preserve span
    assert plan.meta["cache_spans"][0]["stages"] == ["plan", "write:draft", "write:check"]
    assert 'label="write:draft' in plan_to_dot(plan)


def test_send_fan_out_becomes_a_map() -> None:
    plan = compiled(send_app())
    fan = plan.node("map:split")
    assert fan.kind == "map" and fan.label == "Send from fan_out"
    assert fan.args == [{"$ref": "split"}]
    assert plan.node("worker").scope == "map:split"
    assert plan.node("reduce").args == [{"$gather": "worker", "map": "map:split"}]
    dot = plan_to_dot(plan)
    assert "subgraph cluster_map_split" in dot and "[each]" in dot


def test_functional_api_shows_only_the_entrypoint() -> None:
    plan = compiled(functional)
    assert [n.id for n in plan.nodes] == ["input:state", "functional", "output"]
    assert plan.node("output").args == [{"$ref": "functional"}]


def test_orla_run_on_a_graph_plan_says_it_cannot_run_before_starting_anything() -> None:
    with pytest.raises(orla.OrlaError, match=r"orla\.run cannot run it"):
        orla.run(compiled(triage_app()))


def test_render_writes_svg_and_dot_for_graphs_plans_and_workflows(tmp_path: Path) -> None:
    svg = Path(orla.render(agent_app(), str(tmp_path / "agent.svg")))
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    dot = Path(orla.render(compiled(send_app()), str(tmp_path / "send.dot")))
    assert dot.read_text().startswith("digraph map_reduce {")
    from orla_sdk.examples.customer_support import support

    assert Path(orla.render(support, str(tmp_path / "support.gv"))).exists()
    with pytest.raises(orla.OrlaError, match=r"orla\.compile takes an @orla\.workflow"):
        orla.render(42, str(tmp_path / "x.svg"))


def test_dot_snapshot(snapshot: SnapshotAssertion) -> None:
    assert plan_to_dot(compiled(agent_app())) == snapshot
