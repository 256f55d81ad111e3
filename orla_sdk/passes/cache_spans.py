"""Cache spans: where a backend should keep a workflow's KV cache, and where drop it.

Stage B extends stage A's context when B consumes A's output, both run on the same
backend and model in the same loop body, and no stage on another target runs between
them. Such links form preserve spans: A keeps its cache for B. A stage followed by a
stage on another backend or model flushes (a switch), and so does the last stage of a
path through the workflow. ``cache="preserve"`` or ``"flush"`` on a stage wins. Stages
routed at run time are decided by the runtime once their target is known. Each decision
and its reason land in ``meta["cache"]``; the spans in ``plan.meta["cache_spans"]``.
"""

from __future__ import annotations

from typing import Any

from orla_sdk.ir import (
    CacheDecision,
    CacheNote,
    Node,
    Plan,
    cache_of,
    dependencies,
    mapping_of,
    write,
)


def cache_spans(plan: Plan) -> Plan:
    graph = _Graph(plan)
    links: list[tuple[str, str]] = []
    for node in graph.stages.values():
        decision, reason, linked = _decide(plan, graph, node)
        write(node, CacheNote(decision=decision, reason=reason))
        links.extend((node.id, other) for other in linked)
    plan.meta["cache_spans"] = _spans(graph.stages, links)
    plan.meta["cache_end"] = "flush every span when the workflow ends"
    return plan


class _Graph:
    """The plan's stages with what the cache decision needs to know about each."""

    def __init__(self, plan: Plan) -> None:
        order = plan.topological_order()
        self.order = [n.id for n in order]
        self.position = {nid: i for i, nid in enumerate(self.order)}
        self.stages = {n.id: n for n in order if n.kind == "stage"}
        self.successors = plan.successors()
        self.predecessors = plan.predecessors()

    def target(self, node_id: str) -> str | None:
        return _target_key(self.stages[node_id]) if node_id in self.stages else None

    def next_stages(self, node_id: str) -> list[str]:
        """The first stages after ``node_id``, looking through branch and map nodes."""
        found: dict[str, None] = {}
        frontier = list(self.successors[node_id])
        seen: set[str] = set()
        while frontier:
            nid = frontier.pop(0)
            if nid in seen:
                continue
            seen.add(nid)
            if nid in self.stages:
                found[nid] = None
            else:
                frontier.extend(self.successors[nid])
        return list(found)

    def foreign_between(self, start: str, end: str, key: str) -> bool:
        """Whether some path from ``start`` to ``end`` passes a stage not on ``key``."""
        reached = {start: False}  # node -> reached through a foreign stage
        for nid in self.order[self.position[start] + 1:self.position[end] + 1]:
            via = [reached[p] or (p != start and p in self.stages and self.target(p) != key)
                   for p in self.predecessors[nid] if p in reached]
            if via:
                reached[nid] = any(via)
        return reached.get(end, False)


def _target_key(node: Node) -> str | None:
    note = mapping_of(node)
    return note.target_key() if note else None


def _decide(plan: Plan, graph: _Graph, node: Node) -> tuple[CacheDecision, str, list[str]]:
    key = graph.target(node.id)
    extending = [n for n in graph.successors[node.id]
                 if n in graph.stages and node.id in dependencies(graph.stages[n])
                 and key is not None and graph.target(n) == key
                 and graph.stages[n].scope == node.scope]
    blocked = [n for n in extending if key and graph.foreign_between(node.id, n, key)]
    linked = [n for n in extending if n not in blocked]
    hint = plan.stage_of(node).cache
    if hint == "preserve":
        return "preserve", 'stage hint cache="preserve"', linked
    if hint == "flush":
        return "flush", 'stage hint cache="flush"', []
    if key is None:
        return "deferred", "routed at run time: decided once the target is known", []
    if linked:
        return "preserve", f"{', '.join(linked)} extend(s) this context on {key}", linked
    if blocked:
        return ("flush", f"a stage on another backend or model runs before {', '.join(blocked)}",
                [])
    following = graph.next_stages(node.id)
    if not following:
        return "flush", "last stage on this path: the workflow ends", []
    others = sorted({graph.target(n) or "a routed stage" for n in following} - {key})
    if others:
        return "flush", f"the workflow switches to {', '.join(others)}", []
    inner = sorted({graph.stages[n].scope or "" for n in following} - {node.scope or ""})
    if inner:
        return "flush", f"the next stages run once per item of {', '.join(inner)}", []
    return "flush", f"{', '.join(following)} do(es) not read this stage's output", []


def _spans(stages: dict[str, Node], links: list[tuple[str, str]]) -> list[dict[str, Any]]:
    parent = {nid: nid for nid in stages}

    def root(nid: str) -> str:
        while parent[nid] != nid:
            parent[nid] = parent[parent[nid]]
            nid = parent[nid]
        return nid

    for a, b in links:
        parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for nid in stages:  # plan order, so span numbering follows the workflow
        groups.setdefault(root(nid), []).append(nid)
    members = [ids for ids in groups.values()
               if len(ids) > 1 or _decision(stages[ids[0]]) == "preserve"]
    spans = []
    for number, ids in enumerate(members, start=1):
        span_id = f"span{number}"
        for nid in ids:
            note = cache_of(stages[nid])
            if note is not None:
                write(stages[nid], note.model_copy(update={"span": span_id}))
        spans.append({"id": span_id, "target": _target_key(stages[ids[0]]),
                      "stages": ids})
    return spans


def _decision(node: Node) -> CacheDecision | None:
    note = cache_of(node)
    return note.decision if note else None
