"""The example workflows: snapshots of their plans and diagrams, and what each one shows."""

from __future__ import annotations

import pytest

import orla_sdk as orla
from examples.dag_math import DEPENDENCIES, FINAL_STEPS, STEPS, dag_math
from examples.mixed_models import mixed_models
from examples.research import research
from orla_sdk.examples.customer_support import Triage, support
from orla_sdk.render import plan_to_dot

WORKFLOWS = {
    "customer_support": support,
    "dag_math": dag_math,
    "research": research,
    "mixed_models": mixed_models,
}
LIGHT = f"laptop/{orla.backends.DEFAULT_LOCAL_MODEL}"
HEAVY = "gpu-server/Qwen/Qwen3-32B"

each_example = pytest.mark.parametrize("name", list(WORKFLOWS))


def compiled(name: str) -> orla.Plan:
    return orla.compile(WORKFLOWS[name])


def reaches(plan: orla.Plan, src: str, dst: str) -> bool:
    successors = plan.successors()
    stack, seen = [src], set()
    while stack:
        node_id = stack.pop()
        if node_id == dst:
            return True
        if node_id not in seen:
            seen.add(node_id)
            stack.extend(successors[node_id])
    return False


def guards(plan: orla.Plan, node_id: str) -> list[list[dict]]:
    return [[c.model_dump() for c in guard] for guard in plan.node(node_id).guards]


# ---- snapshots and serialization -------------------------------------------------------
@each_example
def test_plan_json_snapshot(name, snapshot):
    assert compiled(name).to_json() == snapshot


@each_example
def test_plan_dot_snapshot(name, snapshot):
    assert plan_to_dot(compiled(name)) == snapshot


@each_example
def test_compiling_twice_gives_identical_json(name):
    assert compiled(name).to_json() == compiled(name).to_json()


@each_example
def test_json_round_trips(name):
    text = compiled(name).to_json()
    assert orla.Plan.from_json(text).to_json() == text


# ---- customer support ------------------------------------------------------------------
def test_support_policy_check_and_routing_run_concurrently():
    plan = compiled("customer_support")
    assert not reaches(plan, "policy_check", "route_ticket")
    assert not reaches(plan, "route_ticket", "policy_check")


def test_support_escalation_picks_acknowledge_or_reply():
    plan = compiled("customer_support")
    branch = "branch:classify.needs_escalation"
    assert guards(plan, "acknowledge") == [[{"branch": branch, "choices": [True]}]]
    assert guards(plan, "reply") == [[{"branch": branch, "choices": [False]}]]


def test_support_classify_outputs_the_triage_model():
    output = compiled("customer_support").node("classify").output
    assert output.kind == "model"
    assert output.ref == "orla_sdk.examples.customer_support:Triage"
    assert set(output.fields) == set(Triage.model_fields) == {
        "category", "product", "issue", "customer_request", "needs_escalation"}


# ---- DAG-MATH ----------------------------------------------------------------------------
def step_ids(plan: orla.Plan) -> dict[int, str]:
    """Step index (the stage's constant second argument) -> node id."""
    return {n.args[1]: n.id for n in plan.stage_nodes() if n.label == "step"}


def test_dag_math_has_one_node_per_step():
    plan = compiled("dag_math")
    assert sorted(step_ids(plan)) == list(range(STEPS))
    assert 20 <= STEPS <= 40
    assert [n.label for n in plan.stage_nodes()].count("answer") == 1


def test_dag_math_steps_share_the_problem_prefix():
    plan = compiled("dag_math")
    for node in plan.stage_nodes():
        assert node.args[0] == {"$ref": "input:problem"}, node.id


def test_dag_math_edges_match_the_declared_dependencies():
    plan = compiled("dag_math")
    ids = step_ids(plan)
    predecessors = plan.predecessors()
    for index, deps in enumerate(DEPENDENCIES):
        expected = {"input:problem", *(ids[d] for d in deps)}
        assert set(predecessors[ids[index]]) == expected, index
    answer = next(n.id for n in plan.stage_nodes() if n.label == "answer")
    assert set(predecessors[answer]) == {"input:problem", *(ids[i] for i in FINAL_STEPS)}


def test_dag_math_is_a_dag_not_a_chain():
    roots = [i for i, deps in enumerate(DEPENDENCIES) if not deps]
    joins = [i for i, deps in enumerate(DEPENDENCIES) if len(deps) > 1]
    fan_out = [i for i in range(STEPS) if sum(i in deps for deps in DEPENDENCIES) > 1]
    assert len(roots) > 1 and joins and fan_out and len(FINAL_STEPS) > 1


# ---- research ----------------------------------------------------------------------------
def test_research_fans_out_over_the_planned_queries():
    plan = compiled("research")
    maps = [n for n in plan.nodes if n.kind == "map"]
    assert len(maps) == 1
    assert maps[0].args == [{"$ref": "plan_queries"}]
    assert plan.node("search_and_summarize").scope == maps[0].id


def test_research_synthesize_gathers_every_summary():
    plan = compiled("research")
    map_id = plan.node("search_and_summarize").scope
    gather = {"$gather": "search_and_summarize", "map": map_id}
    assert gather in plan.node("synthesize").args
    assert plan.node("synthesize").scope is None


def test_research_review_verdict_picks_publish_or_revise():
    plan = compiled("research")
    branch = "branch:review.approved"
    assert guards(plan, "publish") == [[{"branch": branch, "choices": [True]}]]
    assert guards(plan, "revise") == [[{"branch": branch, "choices": [False]}]]


def test_research_runs_on_a_light_and_a_heavy_backend():
    plan = compiled("research")
    targets = {n.id: f"{n.meta['mapping']['backend']}/{n.meta['mapping']['model']}"
               for n in plan.stage_nodes()}
    assert targets["search_and_summarize"] == LIGHT
    assert targets["synthesize"] == targets["revise"] == HEAVY
    tools = plan.stage_of(plan.node("search_and_summarize")).tools
    assert [t.name for t in tools] == ["search_notes"]


# ---- mixed models ------------------------------------------------------------------------
def test_mixed_models_light_span_resumes_after_the_heavy_stage():
    plan = compiled("mixed_models")
    spans = plan.meta["cache_spans"]
    assert [s["target"] for s in spans] == [LIGHT, HEAVY, LIGHT]
    first, heavy, second = (s["stages"] for s in spans)
    assert first == ["restate", "plan_solution"]
    assert heavy == ["solve"]
    assert second == ["explain", "simplify"]
    assert reaches(plan, first[-1], "solve") and reaches(plan, "solve", second[0])


def test_mixed_models_cache_hint_wins():
    plan = compiled("mixed_models")
    solve = plan.node("solve")
    assert solve.meta["cache"]["decision"] == "preserve"
    assert "stage hint" in solve.meta["cache"]["reason"]
    plan.stage_of(solve).cache = None
    unhinted = orla.passes.cache_spans(plan).node("solve")
    assert unhinted.meta["cache"]["decision"] == "flush"
