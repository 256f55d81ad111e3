"""The plan IR: canonical JSON, round trips, edges and references."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

import orla_sdk as orla
from orla_sdk.examples.customer_support import support
from orla_sdk.refs import is_importable, load_ref, ref_of


def test_json_round_trip_is_exact() -> None:
    text = orla.compile(support).to_json()
    again = orla.Plan.from_json(text)
    assert again.to_json() == text
    assert json.loads(text)["format"] == "orla.plan/1"


def test_json_is_canonical() -> None:
    text = orla.compile(support).to_json()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_unknown_fields_are_rejected() -> None:
    data = json.loads(orla.compile(support).to_json())
    data["nodes"][0]["colour"] = "red"
    with pytest.raises(ValidationError, match="colour"):
        orla.Plan.model_validate(data)


def test_plan_carries_what_a_runtime_needs() -> None:
    plan = orla.Plan.from_json(orla.compile(support).to_json())
    spec = plan.stage_of(plan.node("policy_check"))
    assert spec.ref == "orla_sdk.examples.customer_support:policy_check"
    assert [t.name for t in spec.tools] == ["read_policy_yaml"]
    assert spec.tools[0].parameters["properties"]["category"]["type"] == "string"
    assert [p.name for p in spec.params] == ["t", "ticket"]
    stage = plan.resolve(spec.ref)
    assert stage.name == "policy_check"
    assert plan.resolve(spec.tools[0].ref)("billing").startswith("Refund")


def test_edges_are_derived_from_references_and_guards() -> None:
    plan = orla.compile(support)
    edges = {(e.src, e.dst, e.kind, e.label) for e in plan.edges()}
    assert ("classify", "branch:classify.needs_escalation", "data", ".needs_escalation") in edges
    assert ("branch:classify.needs_escalation", "reply", "control", "false") in edges
    assert ("branch:classify.needs_escalation", "acknowledge", "control", "true") in edges
    assert plan.predecessors()["reply"] == ["classify", "policy_check", "route_ticket",
                                            "branch:classify.needs_escalation"]


def test_refs() -> None:
    assert ref_of(support.fn) == "orla_sdk.examples.customer_support:support"
    assert load_ref("orla_sdk.examples.customer_support:Triage").__name__ == "Triage"
    assert not is_importable("mod:f.<locals>.g")
    with pytest.raises(orla.errors.RefError, match="module level"):
        load_ref("mod:f.<locals>.g")
    with pytest.raises(orla.errors.RefError, match="cannot import"):
        load_ref("no_such_module_xyz:thing")
    with pytest.raises(orla.errors.RefError, match="has no"):
        load_ref("orla_sdk.examples.customer_support:nothing_here")
