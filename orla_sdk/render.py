"""Draw a plan with graphviz: DOT text, or SVG/PNG through Debian's ``dot``.

Conventions: stages are boxes filled with their backend's colour and labelled with their
logical model and priority (the legend maps colours to backends and models); preserve
spans are dashed blue clusters; a loop body is a grey cluster headed by its map node;
branches are diamonds whose dashed outgoing edges carry the guard; stages routed at run
time are grey with a double border and list their candidates. An input read by many
stages (a shared prompt prefix) is drawn without its edges, and says how many read it.
"""

from __future__ import annotations

import html
import os
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any

from orla_sdk.errors import OrlaError
from orla_sdk.ir import (
    Edge,
    MapperSpec,
    Node,
    Plan,
    PriorityNote,
    Target,
    cache_of,
    mapping_of,
    priority_of,
)

if TYPE_CHECKING:
    import graphviz  # type: ignore[import-untyped]

PALETTE = ["#cfe2ff", "#ffe5b4", "#d1f2d1", "#f8d7da", "#e2d9f3", "#fff3bf", "#d3f0f5"]
ROUTED_FILL = "#f1f1f1"
WIDE_INPUT = 6  # an input read by more nodes than this is drawn without its edges


def _graphviz() -> ModuleType:
    import graphviz  # loaded on first drawing: ``import orla_sdk`` stays light

    module: ModuleType = graphviz
    return module


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
    except _graphviz().ExecutableNotFound as exc:
        raise OrlaError("graphviz's `dot` is not installed; run `apt-get install -y graphviz` "
                        "(or write a .dot file instead).") from exc


def build_graph(plan: Plan) -> graphviz.Digraph:
    graph = _graphviz().Digraph(name=plan.name, graph_attr={
        "rankdir": "TB", "fontname": "Helvetica", "fontsize": "11", "label": _title(plan),
        "labelloc": "t", "compound": "true", "newrank": "true"})
    graph.attr("node", fontname="Helvetica", fontsize="10")
    graph.attr("edge", fontname="Helvetica", fontsize="9")
    colours = {b.name: PALETTE[i % len(PALETTE)] for i, b in enumerate(plan.backends)}
    names = dot_names(plan)
    edges = plan.edges()
    wide = _wide_inputs(plan, edges)
    _add_nodes(graph, plan, colours, names, wide)
    for edge in edges:
        if edge.src in wide:
            continue
        attrs = {"style": "dashed", "color": "#555555"} if edge.kind == "control" else {}
        if edge.label:
            attrs["label"] = edge.label
        graph.edge(names[edge.src], names[edge.dst], **attrs)
    _add_loop_edges(graph, plan, names)
    _add_legend(graph, plan, colours)
    return graph


def _add_loop_edges(graph: graphviz.Digraph, plan: Plan, names: dict[str, str]) -> None:
    """Edges that close a cycle (``plan.meta["loop_edges"]``, from ``plan_from_graph``):
    dashed, labelled, and left out of the layout's ranking so the plan still reads down."""
    for loop in plan.meta.get("loop_edges", []):
        graph.edge(names[loop["src"]], names[loop["dst"]], label=loop["label"],
                   style="dashed", color="#b7410e", fontcolor="#b7410e", constraint="false")


def dot_names(plan: Plan) -> dict[str, str]:
    """DOT-safe node names (":" would read as a port), unique within the plan."""
    names: dict[str, str] = {}
    for node in plan.nodes:
        name = re.sub(r"[^A-Za-z0-9_]", "_", node.id)
        while name in names.values():
            name += "_"
        names[node.id] = name
    return names


def _wide_inputs(plan: Plan, edges: list[Edge]) -> dict[str, int]:
    """Inputs read by more than WIDE_INPUT nodes, with how many nodes read them."""
    inputs = {n.id for n in plan.nodes if n.kind == "input"}
    readers: dict[str, set[str]] = {}
    for edge in edges:
        if edge.src in inputs:
            readers.setdefault(edge.src, set()).add(edge.dst)
    return {nid: len(dsts) for nid, dsts in readers.items() if len(dsts) > WIDE_INPUT}


def _title(plan: Plan) -> str:
    return f"{plan.name}  ({plan_size(plan)})"


def plan_size(plan: Plan) -> str:
    stages, paths = len(plan.stage_nodes()), plan.paths
    return f"{stages} stage{'s' * (stages != 1)}, {paths} path{'s' * (paths != 1)}"


def _add_nodes(graph: graphviz.Digraph, plan: Plan, colours: dict[str, str],
               names: dict[str, str], wide: dict[str, int]) -> None:
    """Nodes go inside their clusters: a loop body holds its spans, a span its stages."""
    clusters: dict[str | None, graphviz.Digraph] = {None: graph}
    for scope in _map_ids(plan):
        clusters[scope] = _graphviz().Digraph(name=f"cluster_{names[scope]}", graph_attr={
            "label": "", "style": "rounded", "color": "#7a7a7a"})
    spans = {span["id"]: _span_cluster(plan, span) for span in plan.meta.get("cache_spans", [])}
    span_scope: dict[str, str | None] = {}
    for node in plan.nodes:
        span = note.span if (note := cache_of(node)) else None
        home = node.id if node.kind == "map" else node.scope  # a map heads its own body
        target = clusters[home]
        if span is not None and span in spans:
            target = spans[span]
            span_scope[span] = node.scope
        target.node(names[node.id], **_node_attrs(plan, node, colours, wide))
    for span_id, sub in spans.items():
        clusters[span_scope.get(span_id)].subgraph(sub)
    for scope in reversed(_map_ids(plan)):
        clusters[plan.node(scope).scope].subgraph(clusters[scope])


def _span_cluster(plan: Plan, span: dict[str, Any]) -> graphviz.Digraph:
    mapping = mapping_of(plan.node(span["stages"][0]))
    backend = mapping.backend or "" if mapping else ""
    return _graphviz().Digraph(name=f"cluster_{span['id']}", graph_attr={
        "label": f"{span['id']}: preserve on {backend}", "style": "dashed",
        "color": "#2b6cb0", "fontcolor": "#2b6cb0"})


def _map_ids(plan: Plan) -> list[str]:
    return [n.id for n in plan.nodes if n.kind == "map"]


def _node_attrs(plan: Plan, node: Node, colours: dict[str, str],
                wide: dict[str, int]) -> dict[str, str]:
    if node.kind == "stage":
        return _stage_attrs(plan, node, colours)
    if node.kind == "branch":
        label = node.label + ("?" if node.test and node.test.op == "value" else "()?")
        return {"shape": "diamond", "label": label, "style": "filled", "fillcolor": "#fafafa"}
    if node.kind == "map":
        return {"shape": "invtrapezium", "label": f"for each item of {node.label}",
                "style": "filled",
                "fillcolor": "#eeeeee"}
    if node.kind == "input":
        readers = f"\n(read by {wide[node.id]} nodes)" if node.id in wide else ""
        return {"shape": "ellipse", "label": f"input {node.label}{readers}"}
    return {"shape": "doublecircle", "label": "out", "width": "0.4"}


def _stage_attrs(plan: Plan, node: Node, colours: dict[str, str]) -> dict[str, str]:
    mapping = mapping_of(node)
    title = node.label if node.id == node.label else f"{node.label} ({node.id})"
    lines = [title]
    attrs = {"shape": "box", "style": "rounded,filled"}
    if mapping is not None and mapping.routed:
        names = " | ".join(c.logical for c in mapping.candidates or [])
        lines.append(f"{mapping.logical}: routed ({mapping.mapper}) → {names}")
        attrs.update(peripheries="2", fillcolor=ROUTED_FILL)
    elif mapping is not None:
        lines.append(f"model: {mapping.logical}")
        attrs["fillcolor"] = colours.get(str(mapping.backend), "#ffffff")
    spec = plan.stage_of(node)
    if spec.tools:
        lines.append("tools: " + ", ".join(t.name for t in spec.tools))
    lines.append(_priority_text(priority_of(node)))
    cache = cache_of(node)
    if cache is not None:
        lines.append(f"cache: {cache.decision}")
    attrs["label"] = "\n".join(line for line in lines if line)
    return attrs


def _priority_text(priority: PriorityNote | None) -> str:
    if priority is None:
        return ""
    path = f", path {priority.critical_path}"
    if priority.source == "runtime" and priority.rule is not None:
        rule = priority.rule
        subject = ".".join([rule.get("arg") or "", *rule.get("path", [])]) or rule.get("fn")
        return f"priority: by {subject}{path}"
    return f"priority {priority.value}{path}"


def _add_legend(graph: graphviz.Digraph, plan: Plan, colours: dict[str, str]) -> None:
    """One row a backend: its colour, name and kind, and the logical models it serves."""
    if not plan.backends:
        return
    logicals = [m.logical for n in plan.stage_nodes() if (m := mapping_of(n)) and m.logical]
    used = set(logicals)
    for logical in logicals:
        mapped = plan.mapping.get(logical)
        if isinstance(mapped, MapperSpec):
            used.update([*mapped.candidates, *mapped.consults])
    served: dict[str, list[str]] = {}
    for logical, mapped in sorted(plan.mapping.items()):
        if isinstance(mapped, Target) and logical in used:
            served.setdefault(mapped.backend, []).append(f"{logical} → {mapped.model}")
    rows = "".join(
        f'<TR><TD BGCOLOR="{colours[b.name]}">{html.escape(b.name)}</TD>'
        f"<TD>{b.kind}</TD><TD>{html.escape(', '.join(served.get(b.name, [])))}</TD></TR>"
        for b in plan.backends)
    graph.node("legend", shape="plaintext", label=(
        '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0"><TR><TD COLSPAN="3"><B>backends'
        f"</B></TD></TR>{rows}</TABLE>>"))
