"""The compiler passes: validate, stage mapping, priorities and cache spans."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pytest
from pydantic import BaseModel

import orla_sdk as orla
from orla_sdk.ir import Capabilities, Plan
from orla_sdk.passes.prioritize import critical_path_lengths

MODEL = orla.backends.DEFAULT_LOCAL_MODEL


class Ticket(BaseModel):
    category: Literal["billing", "general"]
    escalate: bool


def lookup(key: str) -> str:
    """Look a key up."""
    return key


def score_by_length(prompt: str) -> float:
    return float(len(prompt))


@orla.stage(model="light")
def triage(text: str) -> Ticket: ...


@orla.stage(model="heavy", tools=[lookup])
def research(t: Ticket, text: str) -> str: ...


@orla.stage(model="heavy")
def answer(t: Ticket, notes: str) -> str: ...


@orla.stage(model="light")
def polish(text: str) -> str: ...


@orla.stage(model="heavy", cache="flush")
def hinted_flush(text: str) -> str: ...


@orla.stage(model="light", cache="preserve")
def hinted_preserve(text: str) -> str: ...


@orla.stage(model="routed")
def routed(text: str) -> str: ...


@orla.stage(model="light", priority=95)
def static_priority(text: str) -> str: ...


@orla.stage(model="light", priority=orla.priority_by("t", "category",
                                                     values={"billing": 90, "general": 10}))
def rule_priority(t: Ticket) -> str: ...


BACKENDS = [orla.backends.llamacpp("small"), orla.backends.llamacpp("big")]
MAPPING = {"light": f"small/{MODEL}", "heavy": orla.Target(backend="big", model=MODEL)}


@orla.workflow
def pipeline(text: str) -> str:
    t = triage(text)
    notes = research(t, text)
    draft = answer(t, notes)
    return polish(draft)


def compile_(wf, **kwargs) -> Plan:  # type: ignore[no-untyped-def]
    kwargs.setdefault("backends", BACKENDS)
    kwargs.setdefault("mapping", MAPPING)
    return orla.compile(wf, **kwargs)


# ---- validate ---------------------------------------------------------------------------
@orla.stage(model="nowhere", cache="sometimes", priority=101)
def broken(text: str, extra: int) -> Ticket: ...


@orla.stage(model="plain", tools=[lookup])
def needs_tools(text: str) -> Ticket: ...


def test_validate_reports_every_problem_at_once() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        broken(text, 1, 2, bogus=3)  # type: ignore[call-arg]
        return needs_tools(text).category

    plain = orla.backends.openai_compatible("plain-api", "http://127.0.0.1:9/v1",
                                            tool_calling=False, json_schema=False)
    with pytest.raises(orla.PlanValidationError) as info:
        orla.compile(wf, backends=[plain], mapping={"plain": "plain-api/m"})
    problems = info.value.problems
    messages = "\n".join(str(p) for p in problems)
    assert "positional argument" in messages
    assert "no parameter 'bogus'" in messages
    assert "cache='sometimes'" in messages
    assert "priority=101" in messages
    assert "unknown model 'nowhere'" in messages
    assert "neither call tools nor constrain output" in messages
    assert "no JSON-schema mode" in messages
    assert len(problems) == 7
    assert all(p.fix and p.site and p.site.startswith("test_passes:") for p in problems)


def test_validate_checks_backends_models_and_mapper_candidates() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        return routed(polish(text))

    mapper = orla.OneBitStageMapper(judge="light", simple="light", complex="missing")
    with pytest.raises(orla.PlanValidationError) as info:
        orla.compile(wf, backends=[orla.backends.llamacpp("small")],
                     mapping={"light": "small/other-model", "routed": mapper})
    messages = "\n".join(str(p) for p in info.value.problems)
    assert "'missing', which is not mapped" in messages
    assert "does not serve" in messages

    with pytest.raises(orla.PlanValidationError, match="not declared"):
        orla.compile(wf, backends=[], mapping={"light": "gone/x", "routed": "gone/x"})


def test_missing_required_argument_and_priority_rule_argument() -> None:
    @orla.stage(model="light", priority=orla.priority_by("nope", values={"x": 1}))
    def needs_two(a: str, b: str) -> str: ...

    @orla.workflow
    def wf(text: str) -> str:
        return needs_two(text)  # type: ignore[call-arg]

    with pytest.raises(orla.PlanValidationError) as info:
        compile_(wf)
    messages = "\n".join(str(p) for p in info.value.problems)
    assert "without required argument(s) b" in messages
    assert "reads argument 'nope'" in messages


def test_validate_finds_cycles_in_imported_plans() -> None:
    plan = compile_(pipeline, passes=[])
    plan.node("triage").args = [{"$ref": "polish"}]
    with pytest.raises(orla.PlanValidationError, match="cycle"):
        orla.passes.validate(plan)


# ---- mapping -------------------------------------------------------------------------------
def test_static_mapping_is_recorded() -> None:
    plan = compile_(pipeline)
    assert plan.node("triage").meta["mapping"] == {
        "logical": "light", "routed": False, "backend": "small", "model": MODEL, "params": {}}
    assert plan.node("answer").meta["mapping"]["backend"] == "big"


def test_routed_stages_record_mapper_and_candidates() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        return routed(text)

    mapping = {**MAPPING, "routed": orla.ThresholdStageMapper(threshold=50, score=score_by_length)}
    plan = compile_(wf, mapping=mapping)
    meta = plan.node("routed").meta["mapping"]
    assert meta["routed"] is True and meta["mapper"] == "threshold"
    assert [(c["logical"], c["backend"]) for c in meta["candidates"]] == [
        ("light", "small"), ("heavy", "big")]
    assert plan.mapping["routed"].config["score"] == "test_passes:score_by_length"  # type: ignore[union-attr]
    assert plan.node("routed").meta["cache"]["decision"] == "deferred"


def test_mapper_for_stages_without_a_model() -> None:
    @orla.stage
    def anything(text: str) -> str: ...

    @orla.workflow
    def wf(text: str) -> str:
        return anything(text)

    plan = compile_(wf, mapper=orla.OneBitStageMapper())
    assert plan.default_model == "auto"
    assert plan.node("anything").meta["mapping"]["mapper"] == "one_bit"


def test_default_configuration_is_the_embedded_engine() -> None:
    plan = orla.compile(pipeline)
    assert [b.kind for b in plan.backends] == ["llamacpp"]
    assert {m.backend for m in plan.mapping.values()} == {"local"}  # type: ignore[union-attr]


# ---- priorities -------------------------------------------------------------------------------
def test_priorities_static_runtime_and_graph_default() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        t = triage(text)
        static_priority(text)
        return polish(rule_priority(t))

    plan = compile_(wf)
    assert plan.node("static_priority").meta["priority"] == {
        "value": 95, "source": "static", "critical_path": 1}
    rule = plan.node("rule_priority").meta["priority"]
    assert rule["source"] == "runtime" and rule["value"] == 50
    assert rule["rule"] == {"kind": "field", "arg": "t", "path": ["category"],
                            "values": {"billing": 90, "general": 10}}
    triage_priority = plan.node("triage").meta["priority"]
    assert triage_priority["value"] == 50 and triage_priority["source"] == "graph"
    assert triage_priority["critical_path"] == 3


def test_critical_path_counts_stages_to_the_end() -> None:
    plan = compile_(pipeline)
    lengths = critical_path_lengths(plan)
    assert [lengths[s] for s in ("triage", "research", "answer", "polish")] == [4, 3, 2, 1]


# ---- cache spans -------------------------------------------------------------------------------
def test_spans_break_at_a_switch_and_end_with_the_workflow() -> None:
    plan = compile_(pipeline)
    cache = {n.id: n.meta["cache"] for n in plan.stage_nodes()}
    assert cache["triage"]["decision"] == "flush"
    assert "switches to big/" in cache["triage"]["reason"]
    assert cache["research"]["decision"] == "preserve"
    assert cache["answer"]["decision"] == "flush"
    assert cache["polish"]["reason"].startswith("last stage")
    assert plan.meta["cache_spans"] == [
        {"id": "span1", "target": f"big/{MODEL}", "stages": ["research", "answer"]}]


def test_stage_hints_win() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        a = hinted_flush(text)
        b = answer(triage(text), a)
        return hinted_preserve(b)

    plan = compile_(wf)
    assert plan.node("hinted_flush").meta["cache"]["decision"] == "flush"
    assert "stage hint" in plan.node("hinted_flush").meta["cache"]["reason"]
    assert plan.node("hinted_preserve").meta["cache"] == {
        "decision": "preserve", "reason": 'stage hint cache="preserve"', "span": "span1"}


def test_a_stage_on_another_target_in_between_breaks_the_span() -> None:
    @orla.workflow
    def direct(text: str) -> str:
        first = polish(text)
        research(triage(text), text)  # concurrent, not in between
        return polish_two(first, text)

    assert compile_(direct).node("polish").meta["cache"]["decision"] == "preserve"

    @orla.workflow
    def interrupted(text: str) -> str:
        first = polish(text)
        notes = research(triage(text), first)
        return polish_two(first, notes)

    cache = compile_(interrupted).node("polish").meta["cache"]
    assert cache["decision"] == "flush"
    assert cache["reason"] == "a stage on another backend or model runs before polish_two"


@orla.stage(model="light")
def polish_two(a: str, b: str) -> str: ...


def test_spans_do_not_cross_a_loop_body() -> None:
    @orla.stage(model="light")
    def topics(text: str) -> list[str]: ...

    @orla.workflow
    def wf(text: str) -> str:
        parts = [polish(x) for x in topics(text)]
        return polish(parts)  # type: ignore[arg-type]

    plan = compile_(wf)
    assert plan.node("polish").scope is not None
    assert plan.node("polish").meta["cache"]["decision"] == "flush"
    assert plan.node("topics").meta["cache"]["reason"] == (
        "the next stages run once per item of map:topics")


# ---- the pipeline --------------------------------------------------------------------------------
def test_passes_are_a_list_the_user_extends() -> None:
    seen: list[str] = []

    def count_stages(plan: Plan) -> Plan:
        seen.append(plan.name)
        plan.meta["stage_count"] = len(plan.stage_nodes())
        return plan

    plan = compile_(pipeline, passes=[*orla.passes.DEFAULT_PASSES, count_stages])
    assert seen == ["pipeline"] and plan.meta["stage_count"] == 4
    bare = compile_(pipeline, passes=[])
    assert all(not n.meta for n in bare.nodes)


def test_capabilities_are_declared_per_engine() -> None:
    assert orla.backends.llamacpp().capabilities == Capabilities(
        tool_calling=False, json_schema=True, cache_control="slots", metrics=True)
    assert orla.backends.llamacpp(tool_calling=True).capabilities.tool_calling
    assert orla.backends.vllm("v", "http://127.0.0.1:8000/v1").capabilities.cache_control == \
        "global_reset"
    assert orla.backends.ollama("o").capabilities.cache_control == "keep_alive"


@pytest.mark.parametrize("declare", [
    lambda url: orla.backends.llamacpp("l", url), lambda url: orla.backends.vllm("v", url),
    lambda url: orla.backends.sglang("s", url), lambda url: orla.backends.ollama("o", url),
    lambda url: orla.backends.openai_compatible("a", url)])
def test_a_backend_url_without_a_scheme_is_refused_where_it_is_declared(
        declare: Callable[[str], orla.ir.BackendSpec]) -> None:
    with pytest.raises(orla.OrlaError, match=r"'localhost:8080' is not an http\(s\) URL"):
        declare("localhost:8080")
    assert declare("https://engine.example/v1").url == "https://engine.example/v1"


def urgency(t: Ticket) -> int:
    return 99 if t.escalate else 1


def test_priority_rules_evaluate_on_real_arguments() -> None:
    rule = rule_priority.spec().priority
    assert isinstance(rule, orla.ir.PriorityRule)
    billing = Ticket(category="billing", escalate=False)
    assert rule.evaluate({"t": billing}) == 90
    assert rule.evaluate({"t": {"category": "general"}}) == 10
    assert rule.evaluate({"t": None}) == rule.default == 50
    by_call = orla.ir.PriorityRule(kind="call", fn="test_passes:urgency")
    assert by_call.evaluate({"t": Ticket(category="general", escalate=True)}) == 99


def test_long_chains_validate_without_recursion() -> None:
    @orla.workflow
    def wf(text: str) -> str:
        for _ in range(1500):
            text = polish(text)
        return text

    plan = compile_(wf)
    assert len(plan.stage_nodes()) == 1500
    assert plan.node("polish_1500").meta["cache"]["decision"] == "flush"


def test_a_mapper_judge_must_be_mapped_and_the_default_setup_maps_it() -> None:
    @orla.stage
    def anything(text: str) -> str: ...

    @orla.workflow
    def wf(text: str) -> str:
        return anything(text)

    with pytest.raises(orla.PlanValidationError, match="asks 'tiny'"):
        compile_(wf, mapper=orla.OneBitStageMapper(judge="tiny"))
    plan = orla.compile(wf, mapper=orla.OneBitStageMapper())
    assert sorted(plan.mapping) == ["auto", "heavy", "light"]


def test_values_picked_inside_a_loop_cannot_be_gathered() -> None:
    @orla.stage(model="light")
    def tickets(text: str) -> list[str]: ...

    @orla.workflow
    def wf(text: str) -> list[str]:
        replies = []
        for ticket in tickets(text):
            t = triage(ticket)
            replies.append(polish(ticket) if t.escalate else polish_two(ticket, ticket))
        return replies

    with pytest.raises(orla.PlanValidationError, match="collects values that branch"):
        compile_(wf)
