"""Draw a plan with graphviz: DOT text, or SVG/PNG through Debian's ``dot``.

Conventions: stages are boxes filled with their backend's colour and labelled with
logical model, target and priority; preserve spans are dashed clusters; a loop body is
a cluster under its map node; branches are diamonds and their outgoing control edges
(dashed) carry the guard; stages routed at run time have a double border and list their
candidates.
"""

from __future__ import annotations

import os
import re
from typing import Any

import graphviz  # type: ignore[import-untyped]

from orla_sdk.errors import OrlaError
from orla_sdk.ir import Node, Plan

PALETTE = ["#cfe2ff", "#ffe5b4", "#d1f2d1", "#f8d7da", "#e2d9f3", "#fff3bf", "#d3f0f5"]
ROUTED_FILL = "#f1f1f1"


def plan_to_dot(plan: Plan) -> str:
    return str(build_graph(plan).source)


def render_plan(plan: Plan, path: str) -> str:
    """Write the diagram to ``path`` (.svg, .png, .pdf or .dot); return the path."""
    ext = os.path.splitext(path)[1]
    fmt = ext.lstrip(".").lower()
    if fmt == "dot" or fmt == "gv":
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(plan_to_dot(plan))
        return path
    if fmt not in ("svg", "png", "pdf"):
        raise OrlaError(f"cannot render {path!r}: use a .svg, .png, .pdf or .dot file name.")
    try:
        return str(build_graph(plan).render(outfile=path, format=fmt, cleanup=True))
    except graphviz.ExecutableNotFound as exc:
        raise OrlaError("graphviz's `dot` is not installed; run `apt-get install -y graphviz` "
                        "(or write a .dot file instead).") from exc


def build_graph(plan: Plan) -> graphviz.Digraph:
    graph = graphviz.Digraph(name=plan.name, graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "fontsize": "11", "label": _title(plan),
        "labelloc": "t", "compound": "true", "newrank": "true"})
    graph.attr("node", fontname="Helvetica", fontsize="10")
    graph.attr("edge", fontname="Helvetica", fontsize="9")
    colours = {b.name: PALETTE[i % len(PALETTE)] for i, b in enumerate(plan.backends)}
    names = dot_names(plan)
    _add_nodes(graph, plan, colours, names)
    for edge in plan.edges():
        attrs = {"style": "dashed", "color": "#555555"} if edge.kind == "control" else {}
        if edge.label:
            attrs["label"] = edge.label
        graph.edge(names[edge.src], names[edge.dst], **attrs)
    _add_legend(graph, plan, colours)
    return graph


def dot_names(plan: Plan) -> dict[str, str]:
    """DOT-safe node names (":" would read as a port), unique within the plan."""
    names: dict[str, str] = {}
    for node in plan.nodes:
        name = re.sub(r"[^A-Za-z0-9_]", "_", node.id)
        while name in names.values():
            name += "_"
        names[node.id] = name
    return names


def _title(plan: Plan) -> str:
    return f"{plan.name}  ({len(plan.stage_nodes())} stages, {plan.paths} paths)"


def _add_nodes(graph: graphviz.Digraph, plan: Plan, colours: dict[str, str],
               names: dict[str, str]) -> None:
    """Nodes go inside their clusters: a loop body holds its spans, a span its stages."""
    clusters: dict[str | None, graphviz.Digraph] = {None: graph}
    for scope in _scopes_outside_in(plan):
        body = graphviz.Digraph(name=f"cluster_{names[scope]}", graph_attr={
            "label": f"for each item of {plan.node(scope).label.removeprefix('each ')}",
            "style": "rounded", "color": "#7a7a7a"})
        clusters[scope] = body
    spans: dict[str, graphviz.Digraph] = {}
    for span in plan.meta.get("cache_spans", []):
        spans[span["id"]] = graphviz.Digraph(name=f"cluster_{span['id']}", graph_attr={
            "label": f"preserve {span['id']}: {span['target']}", "style": "dashed",
            "color": "#2b6cb0", "fontcolor": "#2b6cb0"})
    span_scope: dict[str, str | None] = {}
    for node in plan.nodes:
        span = node.meta.get("cache", {}).get("span")
        target = spans[span] if span in spans else clusters[node.scope]
        if span in spans:
            span_scope[span] = node.scope
        target.node(names[node.id], **_node_attrs(plan, node, colours))
    for span_id, sub in spans.items():
        clusters[span_scope.get(span_id)].subgraph(sub)
    for scope in reversed(_scopes_outside_in(plan)):
        clusters[plan.node(scope).scope].subgraph(clusters[scope])


def _scopes_outside_in(plan: Plan) -> list[str]:
    return [n.id for n in plan.nodes if n.kind == "map"]


def _node_attrs(plan: Plan, node: Node, colours: dict[str, str]) -> dict[str, str]:
    if node.kind == "stage":
        return _stage_attrs(plan, node, colours)
    if node.kind == "branch":
        label = node.label + ("?" if node.test and node.test.op == "value" else "()?")
        return {"shape": "diamond", "label": label, "style": "filled", "fillcolor": "#fafafa"}
    if node.kind == "map":
        return {"shape": "invtrapezium", "label": f"map: {node.label}", "style": "filled",
                "fillcolor": "#eeeeee"}
    if node.kind == "input":
        return {"shape": "ellipse", "label": f"input {node.label}"}
    return {"shape": "doublecircle", "label": "out", "width": "0.4"}


def _stage_attrs(plan: Plan, node: Node, colours: dict[str, str]) -> dict[str, str]:
    mapping: dict[str, Any] = node.meta.get("mapping", {})
    lines = [node.label]
    attrs = {"shape": "box", "style": "rounded,filled"}
    if mapping.get("routed"):
        names = " | ".join(c["logical"] for c in mapping["candidates"])
        lines.append(f"{mapping['logical']}: routed ({mapping['mapper']}) → {names}")
        attrs.update(peripheries="2", fillcolor=ROUTED_FILL)
    elif mapping:
        lines.append(f"{mapping['logical']} → {mapping['backend']}/{mapping['model']}")
        attrs["fillcolor"] = colours.get(mapping["backend"], "#ffffff")
    spec = plan.stage_of(node)
    if spec.tools:
        lines.append("tools: " + ", ".join(t.name for t in spec.tools))
    lines.append(_priority_text(node.meta.get("priority")))
    cache = node.meta.get("cache")
    if cache:
        lines.append(f"cache: {cache['decision']}")
    attrs["label"] = "\n".join(line for line in lines if line)
    return attrs


def _priority_text(priority: dict[str, Any] | None) -> str:
    if not priority:
        return ""
    if priority["source"] == "runtime":
        rule = priority["rule"]
        subject = ".".join([rule.get("arg") or "", *rule.get("path", [])]) or rule.get("fn")
        return f"priority: by {subject} at run time"
    return f"priority {priority['value']} ({priority['source']})"


def _add_legend(graph: graphviz.Digraph, plan: Plan, colours: dict[str, str]) -> None:
    if not plan.backends:
        return
    rows = "".join(
        f'<TR><TD BGCOLOR="{colours[b.name]}">{b.name}</TD><TD>{b.kind}</TD></TR>'
        for b in plan.backends)
    graph.node("legend", shape="plaintext", label=(
        f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0"><TR><TD COLSPAN="2"><B>backends'
        f"</B></TD></TR>{rows}</TABLE>>"))
