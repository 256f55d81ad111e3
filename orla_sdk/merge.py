"""Merge the paths a tracer recorded into one plan.

A node that appears on every path is unconditional. Any other node gets guards: for each
path it appears on, the shortest run of branch decisions just before it that, on every
path where those decisions hold, leads to it. Guards that differ only in one branch's
choice are merged, and conditions that add nothing are dropped.

Arguments that differ between paths become ``$oneof`` alternatives, each with the guard
(relative to the paths that reach the node) under which it is the one passed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from orla_sdk.errors import TraceError
from orla_sdk.ir import Condition, Guard, Node, Plan, PriorityRule
from orla_sdk.trace import Draft, PathRecord, Tracer, Visit
from orla_sdk.typespec import type_spec

Conj = list[tuple[str, list[Any]]]  # [(branch id, allowed choices)], in decision order
Prefix = tuple[tuple[str, Any], ...]  # the decisions taken before a node, on one path


def merge_paths(tracer: Tracer, name: str, workflow_ref: str) -> Plan:
    merger = _Merger(tracer.paths, tracer.drafts)
    nodes: list[Node] = []
    stages = {}
    objects: dict[str, Any] = dict(tracer.objects)
    for node_id, draft in tracer.drafts.items():
        if draft.stage is not None:
            spec = draft.stage.spec()
            stages[spec.ref] = spec
            objects.update(_live_objects(draft))
        nodes.append(merger.node(node_id, draft))
    nodes.sort(key=lambda n: n.kind == "output")  # stable: discovery order, output last
    plan = Plan(name=name, workflow=workflow_ref, nodes=nodes, stages=stages,
                paths=len(tracer.paths))
    ordered = plan.topological_order()
    if len(ordered) < len(nodes):
        cyclic = sorted({n.id for n in nodes} - {n.id for n in ordered})
        raise TraceError(
            f"workflow {name!r} could not be merged into one plan: the guards of "
            f"{', '.join(cyclic)} depend on each other. Fix: test each value once, before "
            "the branches that use it, and report this workflow to orla's maintainers.")
    plan.nodes = ordered
    plan.attach(objects)
    return plan


def _live_objects(draft: Draft) -> dict[str, Any]:
    """The stage, its tools and its priority function, by the references the plan uses."""
    assert draft.stage is not None
    spec = draft.stage.spec()
    objects: dict[str, Any] = {spec.ref: draft.stage}
    objects.update({t.ref: fn for t, fn in zip(spec.tools, draft.stage.tools, strict=True)})
    if isinstance(spec.priority, PriorityRule) and spec.priority.fn:
        objects[spec.priority.fn] = draft.stage.priority
    return objects


class _Merger:
    def __init__(self, paths: list[PathRecord], drafts: dict[str, Draft]) -> None:
        self.paths = paths
        self.all = (1 << len(paths)) - 1
        self.choices = {nid: d.choices for nid, d in drafts.items() if d.kind == "branch"}
        self.by_choice: dict[tuple[str, str], int] = {}  # bit i stands for path i
        for i, path in enumerate(paths):
            for branch, choice in path.choices.items():
                key = (branch, repr(choice))
                self.by_choice[key] = self.by_choice.get(key, 0) | (1 << i)

    def node(self, node_id: str, draft: Draft) -> Node:
        visits = {i: p.visits[node_id] for i, p in enumerate(self.paths) if node_id in p.visits}
        reached = _mask(visits)
        return Node(
            id=node_id, kind=draft.kind, label=draft.label, site=draft.site, scope=draft.scope,
            guards=self.guards(visits, reached, self.all),
            args=self._positional(visits, reached), kwargs=self._keywords(visits, reached),
            stage=draft.stage.spec().ref if draft.stage else None, test=draft.test,
            choices=draft.choices, output=type_spec(draft.annotation))

    # ---- guards ---------------------------------------------------------------------
    def guards(self, visits: dict[int, Visit], target: int, universe: int) -> list[Guard]:
        """Conditions under which, among the paths in ``universe``, one in ``target`` runs."""
        if target == universe:
            return []
        conjs: list[Conj] = []
        for i, visit in visits.items():
            if target >> i & 1:
                conj = self._shortest_sufficient(visit.prefix, target, universe)
                if conj not in conjs:
                    conjs.append(conj)
        conjs = [self._drop_redundant(c, target, universe) for c in _merge_alternatives(conjs)]
        if any(not c for c in conjs):
            return []
        return [[Condition(branch=b, choices=_ordered(cs, self.choices[b])) for b, cs in conj]
                for conj in _drop_subsumed(conjs)]

    def _matching(self, conj: Conj) -> int:
        mask = self.all
        for branch, allowed in conj:
            either = 0
            for choice in allowed:
                either |= self.by_choice.get((branch, repr(choice)), 0)
            mask &= either
        return mask

    def _sufficient(self, conj: Conj, target: int, universe: int) -> bool:
        """Every path of ``universe`` on which ``conj`` holds is in ``target``."""
        return self._matching(conj) & universe & ~target == 0

    def _shortest_sufficient(self, prefix: Prefix, target: int, universe: int) -> Conj:
        for start in range(len(prefix) - 1, -1, -1):
            conj = [(b, [c]) for b, c in prefix[start:]]
            if self._sufficient(conj, target, universe):
                return conj
        return [(b, [c]) for b, c in prefix]

    def _drop_redundant(self, conj: Conj, target: int, universe: int) -> Conj:
        for cond in list(conj):
            shorter = [c for c in conj if c is not cond]
            if self._sufficient(shorter, target, universe):
                conj = shorter
        return conj

    # ---- arguments --------------------------------------------------------------------
    def _positional(self, visits: dict[int, Visit], reached: int) -> list[Any]:
        width = max((len(v.args) for v in visits.values()), default=0)
        return [self.one_of({i: v.args[k] for i, v in visits.items() if k < len(v.args)},
                            visits, reached) for k in range(width)]

    def _keywords(self, visits: dict[int, Visit], reached: int) -> dict[str, Any]:
        names = list(dict.fromkeys(k for v in visits.values() for k in v.kwargs))
        return {k: self.one_of({i: v.kwargs[k] for i, v in visits.items() if k in v.kwargs},
                               visits, reached) for k in names}

    def one_of(self, per_path: dict[int, Any], visits: dict[int, Visit], reached: int) -> Any:
        """One template for all paths: equal parts stay, differing parts become ``$oneof``."""
        distinct: dict[str, tuple[Any, int]] = {}
        for i, template in per_path.items():
            key = json.dumps(template, sort_keys=True)
            value, mask = distinct.get(key, (template, 0))
            distinct[key] = (value, mask | 1 << i)
        values = [v for v, _ in distinct.values()]
        if len(values) == 1:
            return values[0]
        if all(isinstance(v, list) and len(v) == len(values[0]) for v in values):
            return [self.one_of({i: t[k] for i, t in per_path.items()}, visits, reached)
                    for k in range(len(values[0]))]
        if all(_plain_dict(v) and v.keys() == values[0].keys() for v in values):
            return {k: self.one_of({i: t[k] for i, t in per_path.items()}, visits, reached)
                    for k in values[0]}
        return {"$oneof": [
            {"value": value, "when": [[c.model_dump(mode="json") for c in guard]
                                      for guard in self.guards(visits, mask, reached)]}
            for value, mask in distinct.values()]}


def _mask(visits: dict[int, Visit]) -> int:
    mask = 0
    for i in visits:
        mask |= 1 << i
    return mask


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


def _drop_subsumed(conjs: list[Conj]) -> list[Conj]:
    def weaker(a: Conj, b: Conj) -> bool:  # a holds whenever b holds
        bd = dict(b)
        return a != b and all(x in bd and set(bd[x]) <= set(cs) for x, cs in a)

    return [c for c in conjs if not any(weaker(other, c) for other in conjs)]


def _ordered(chosen: Sequence[Any], all_choices: list[Any]) -> list[Any]:
    return [c for c in all_choices if c in chosen]


def _plain_dict(value: Any) -> bool:
    return isinstance(value, dict) and not any(k.startswith("$") for k in value)
