"""Cache spans: where a backend should keep a workflow's KV cache, and where drop it.

Stage B extends stage A's context when B consumes A's output and both run on the same
backend and model (in the same loop body). Such links form preserve spans: A keeps its
cache for B. A stage whose output only feeds stages on another backend or model
flushes (a switch), and so does the last stage of a workflow. ``cache="preserve"`` or
``"flush"`` on a stage wins. Stages routed at run time are decided by the runtime once
their target is known. Each decision and its reason land in ``meta["cache"]``.
"""

from __future__ import annotations

from typing import Any

from orla_sdk.ir import Node, Plan
from orla_sdk.passes.map_stages import target_key


def cache_spans(plan: Plan) -> Plan:
    stages = {n.id: n for n in plan.stage_nodes()}
    consumers = _stage_consumers(plan, stages)
    links: list[tuple[str, str]] = []
    for node in stages.values():
        decision, reason, linked = _decide(plan, node, consumers[node.id], stages)
        node.meta["cache"] = {"decision": decision, "reason": reason}
        links.extend((node.id, other) for other in linked)
    spans = _spans(plan, stages, links)
    plan.meta["cache_spans"] = spans
    plan.meta["cache_end"] = "flush every span when the workflow ends"
    return plan


def _stage_consumers(plan: Plan, stages: dict[str, Node]) -> dict[str, list[str]]:
    consumers: dict[str, list[str]] = {nid: [] for nid in stages}
    for node in stages.values():
        for _, ref in node.refs():
            src = ref.get("$ref") or ref["$gather"]
            if src in consumers and node.id not in consumers[src]:
                consumers[src].append(node.id)
    return consumers


def _decide(plan: Plan, node: Node, consumers: list[str],
            stages: dict[str, Node]) -> tuple[str, str, list[str]]:
    key = target_key(node.meta)
    same = [c for c in consumers
            if key is not None and target_key(stages[c].meta) == key
            and stages[c].scope == node.scope]
    hint = plan.stage_of(node).cache
    if hint in ("preserve", "flush"):
        return hint, f'stage hint cache="{hint}"', same if hint == "preserve" else []
    if key is None:
        return "deferred", "routed at run time: decided once the target is known", []
    if same:
        return "preserve", f"{', '.join(same)} extend(s) this context on {key}", same
    if not consumers:
        return "flush", "last stage on this path: the workflow ends", []
    others = sorted({target_key(stages[c].meta) or "a routed stage" for c in consumers})
    return "flush", f"next stage(s) switch to {', '.join(others)}", []


def _spans(plan: Plan, stages: dict[str, Node],
           links: list[tuple[str, str]]) -> list[dict[str, Any]]:
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
               if len(ids) > 1 or stages[ids[0]].meta["cache"]["decision"] == "preserve"]
    spans = []
    for number, ids in enumerate(members, start=1):
        span_id = f"span{number}"
        for nid in ids:
            stages[nid].meta["cache"]["span"] = span_id
        spans.append({"id": span_id, "target": target_key(stages[ids[0]].meta),
                      "stages": ids})
    return spans
