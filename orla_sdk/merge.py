"""Merge the paths a tracer recorded into one plan.

A node that appears on every path is unconditional. Any other node gets guards: for each
path it appears on, the shortest run of branch decisions just before it that, on every
path where those decisions hold, leads to it. Guards that differ only in one branch's
choice are merged, and conditions that add nothing are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from orla_sdk.ir import Condition, Guard, Node, Plan, PriorityRule
from orla_sdk.trace import PathRecord, Tracer, Visit
from orla_sdk.typespec import type_spec

Conj = list[tuple[str, list[Any]]]  # [(branch id, allowed choices)], in decision order


class _PathIndex:
    """Sets of paths as bit masks: bit i stands for path i."""

    def __init__(self, paths: list[PathRecord]) -> None:
        self.count = len(paths)
        self.by_choice: dict[tuple[str, str], int] = {}
        for i, path in enumerate(paths):
            for branch, choice in path.choices.items():
                key = (branch, repr(choice))
                self.by_choice[key] = self.by_choice.get(key, 0) | (1 << i)

    def matching(self, conj: Conj) -> int:
        """The paths on which every condition of ``conj`` holds."""
        mask = (1 << self.count) - 1
        for branch, allowed in conj:
            either = 0
            for choice in allowed:
                either |= self.by_choice.get((branch, repr(choice)), 0)
            mask &= either
        return mask


def merge_paths(tracer: Tracer, name: str, workflow_ref: str) -> Plan:
    paths = tracer.paths
    index = _PathIndex(paths)
    choices = {nid: d.choices for nid, d in tracer.drafts.items() if d.kind == "branch"}
    nodes: list[Node] = []
    stages = {}
    objects: dict[str, Any] = dict(tracer.objects)
    for node_id, draft in tracer.drafts.items():
        visits = [(i, p.visits[node_id]) for i, p in enumerate(paths) if node_id in p.visits]
        stage_ref = None
        if draft.stage is not None:
            spec = draft.stage.spec()
            stage_ref = spec.ref
            stages[stage_ref] = spec
            objects[stage_ref] = draft.stage
            objects.update({t.ref: fn for t, fn in zip(spec.tools, draft.stage.tools, strict=True)})
            if isinstance(spec.priority, PriorityRule) and spec.priority.fn:
                objects[spec.priority.fn] = draft.stage.priority
        nodes.append(Node(
            id=node_id, kind=draft.kind, label=draft.label, site=draft.site, scope=draft.scope,
            guards=_guards(visits, index, choices),
            args=_merge_positional([v.args for _, v in visits]),
            kwargs=_merge_keywords([v.kwargs for _, v in visits]),
            stage=stage_ref, test=draft.test, choices=draft.choices,
            output=type_spec(draft.annotation),
        ))
    nodes.sort(key=lambda n: n.kind == "output")  # stable: discovery order, output last
    plan = Plan(name=name, workflow=workflow_ref, nodes=nodes, stages=stages, paths=len(paths))
    plan.nodes = plan.topological_order()
    plan.attach(objects)
    return plan


# ---- guards -------------------------------------------------------------------------
def _guards(visits: list[tuple[int, Visit]], index: _PathIndex,
            choices: dict[str, list[Any]]) -> list[Guard]:
    if len(visits) == index.count:
        return []
    reached = 0
    for i, _ in visits:
        reached |= 1 << i
    conjs: list[Conj] = []
    for _, visit in visits:
        conj = _shortest_sufficient(visit.prefix, reached, index)
        if conj not in conjs:
            conjs.append(conj)
    conjs = _merge_alternatives(conjs)
    conjs = [_drop_redundant(c, reached, index) for c in conjs]
    if any(not c for c in conjs):
        return []
    conjs = _drop_subsumed(conjs)
    return [[Condition(branch=b, choices=_ordered(cs, choices[b])) for b, cs in conj]
            for conj in conjs]


def _sufficient(conj: Conj, reached: int, index: _PathIndex) -> bool:
    """Every path on which ``conj`` holds reaches the node."""
    return index.matching(conj) & ~reached == 0


def _shortest_sufficient(prefix: Sequence[tuple[str, Any]], reached: int,
                         index: _PathIndex) -> Conj:
    for start in range(len(prefix) - 1, -1, -1):
        conj = [(b, [c]) for b, c in prefix[start:]]
        if _sufficient(conj, reached, index):
            return conj
    return [(b, [c]) for b, c in prefix]


def _merge_alternatives(conjs: list[Conj]) -> list[Conj]:
    """Merge two guards that differ only in the choices of one branch."""
    merged = True
    while merged:
        merged = False
        for i, a in enumerate(conjs):
            for j in range(i + 1, len(conjs)):
                joined = _join(a, conjs[j])
                if joined is not None:
                    conjs = [*conjs[:i], joined, *conjs[i + 1:j], *conjs[j + 1:]]
                    merged = True
                    break
            if merged:
                break
    return conjs


def _join(a: Conj, b: Conj) -> Conj | None:
    if [x for x, _ in a] != [y for y, _ in b]:
        return None
    differing = [k for k, ((_, ca), (_, cb)) in enumerate(zip(a, b, strict=True)) if ca != cb]
    if len(differing) != 1:
        return None
    k = differing[0]
    union = a[k][1] + [c for c in b[k][1] if c not in a[k][1]]
    return [*a[:k], (a[k][0], union), *a[k + 1:]]


def _drop_redundant(conj: Conj, reached: int, index: _PathIndex) -> Conj:
    for cond in list(conj):
        shorter = [c for c in conj if c is not cond]
        if _sufficient(shorter, reached, index):
            conj = shorter
    return conj


def _drop_subsumed(conjs: list[Conj]) -> list[Conj]:
    def weaker(a: Conj, b: Conj) -> bool:  # a holds whenever b holds
        bd = dict(b)
        return a != b and all(x in bd and set(bd[x]) <= set(cs) for x, cs in a)

    return [c for c in conjs if not any(weaker(other, c) for other in conjs)]


def _ordered(chosen: list[Any], all_choices: list[Any]) -> list[Any]:
    return [c for c in all_choices if c in chosen]


# ---- arguments ----------------------------------------------------------------------
def _merge_positional(per_path: list[list[Any]]) -> list[Any]:
    width = max((len(args) for args in per_path), default=0)
    return [_one_of([args[i] for args in per_path if i < len(args)]) for i in range(width)]


def _merge_keywords(per_path: list[dict[str, Any]]) -> dict[str, Any]:
    names: list[str] = []
    for kwargs in per_path:
        names.extend(k for k in kwargs if k not in names)
    return {k: _one_of([kw[k] for kw in per_path if k in kw]) for k in names}


def _one_of(templates: list[Any]) -> Any:
    """One template for all paths: equal parts stay, differing parts become ``$oneof``."""
    distinct: dict[str, Any] = {}
    for t in templates:
        distinct.setdefault(json.dumps(t, sort_keys=True), t)
    values = list(distinct.values())
    if len(values) == 1:
        return values[0]
    if all(isinstance(v, list) and len(v) == len(values[0]) for v in values):
        return [_one_of([v[i] for v in values]) for i in range(len(values[0]))]
    if all(_plain_dict(v) and v.keys() == values[0].keys() for v in values):
        return {k: _one_of([v[k] for v in values]) for k in values[0]}
    return {"$oneof": values}


def _plain_dict(value: Any) -> bool:
    return isinstance(value, dict) and not any(k.startswith("$") for k in value)
