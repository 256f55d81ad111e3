"""What the executor needs to know of a plan's graph: the nodes of each scope, and which
nodes of its scope each node waits for.

Working that out walks every node's argument templates, which costs more than running a
stage on a fast engine, so it is done once a plan and kept beside it (weakly). A plan can
still be changed after it ran (a pass run again, a node edited by hand): before a kept
layout is used, the plan's nodes are compared with copies of what it was computed from,
and a plan that differs gets a new one.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

from orla_sdk.ir import Node, Plan, dependencies


class Layout:
    """The scopes of a plan (top level: ``None``; a map's body: the map's id), each with
    its nodes in topological order; ``waits_for`` and ``dependents`` within a scope; and
    how each scope starts (``starts``)."""

    def __init__(self, plan: Plan) -> None:
        self.nodes = list(plan.nodes)  # held, so that their ids in ``shape`` stay theirs
        self.shape = [_shape(node) for node in self.nodes]
        self.inputs = [node for node in self.nodes if node.kind == "input"]
        deps = {node.id: dependencies(node) for node in plan.nodes}
        self.scopes: dict[str | None, list[Node]] = {}
        self.scope_of: dict[str, str | None] = {}
        for node in plan.topological_order(deps):
            self.scopes.setdefault(node.scope, []).append(node)
            self.scope_of[node.id] = node.scope
        self.waits_for = {node.id: self._waits_for(node, deps)
                          for nodes in self.scopes.values() for node in nodes}
        self.dependents: dict[str, list[Node]] = {}  # in topological order
        for nodes in self.scopes.values():
            for node in nodes:
                for dep in self.waits_for[node.id]:
                    self.dependents.setdefault(dep, []).append(node)
        self.starts = {scope: self._start(nodes) for scope, nodes in self.scopes.items()}

    def fits(self, plan: Plan) -> bool:
        """Whether ``plan``'s graph is still the one this layout was computed from (one
        comparison of lists: it runs before every run)."""
        return [(id(node), node.id, node.kind, node.scope, node.args, node.kwargs, node.guards)
                for node in plan.nodes] == self.shape  # each as ``_shape``, without copies

    def _start(self, nodes: list[Node]) -> tuple[dict[str, int], list[Node]]:
        """A scope as it starts, its inputs there: how many nodes each node still waits
        for, and the nodes ready to run (shared by every run, which copies the counts and
        never changes the list)."""
        waiting = {node.id: len(self.waits_for[node.id]) for node in nodes}
        for node in nodes:
            if node.kind == "input":
                for later in self.dependents.get(node.id, ()):
                    waiting[later.id] -= 1
        return waiting, [node for node in nodes if node.kind != "input" and not waiting[node.id]]

    def _waits_for(self, node: Node, deps: dict[str, dict[str, None]]) -> set[str]:
        """The nodes of ``node``'s scope that it waits for. A dependency inside a loop body
        is waited for through its map node; a map waits for what its body reads."""
        found = set()
        for dep in self._all_dependencies(node, deps):
            while self.scope_of.get(dep) not in (node.scope, None):
                dep = self.scope_of[dep] or dep
            if dep != node.id and self.scope_of.get(dep, "?") == node.scope:
                found.add(dep)
        return found

    def _all_dependencies(self, node: Node, deps: dict[str, dict[str, None]]) -> set[str]:
        found = set(deps[node.id])
        if node.kind == "map":
            for inner in self.scopes.get(node.id, []):
                found |= self._all_dependencies(inner, deps)
        return found


# id(plan) -> (the plan, weakly; its layout); plans are not hashable
_kept: dict[int, tuple[weakref.ref[Plan], Layout]] = {}


def layout_of(plan: Plan) -> Layout:
    """The plan's layout: the kept one while the plan's graph is unchanged."""
    kept = _kept.get(id(plan))
    if kept is not None and kept[0]() is plan:
        if kept[1].fits(plan):
            return kept[1]
    else:
        weakref.finalize(plan, _kept.pop, id(plan), None)
    layout = Layout(plan)
    _kept[id(plan)] = (weakref.ref(plan), layout)
    return layout


def _shape(node: Node) -> tuple[Any, ...]:
    """Which node it is (the layout holds it: its ``id`` is not reused) and copies of what
    its dependencies and scope are read from."""
    return (id(node), node.id, node.kind, node.scope, copy.deepcopy(node.args),
            copy.deepcopy(node.kwargs), copy.deepcopy(node.guards))
