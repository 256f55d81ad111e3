"""``orla.plan_from_graph``: a compiled LangGraph graph's topology as an orla plan.

The plan describes the graph so that orla's passes can annotate it (model mapping,
priorities, cache spans) and ``orla.render`` can draw it with the conventions of compiled
orla plans. It is a topology plan: it holds no prompts or code, and ``orla.run`` on it
fails with a clear error at its first stage (run the graph itself with ``graph.invoke``).
``orla.serve(graph)`` builds it to map, prioritize and cache the served graph's calls.

How the graph is read, from ``graph.get_graph(xray=True)``:

- ``__start__`` becomes the input ``state`` (default ``None``); ``__end__`` the output.
- Each LangGraph node becomes a stage node. Nodes of a subgraph (added as a node, or
  invoked inside one: a sub-agent) keep LangGraph's xray id ``parent:child`` as id and
  label, so the prefix names the node they belong to; a subgraph's own ``__start__`` and
  ``__end__`` are not stages (edges run through them).
- A node's orla settings come from ``add_node(..., metadata={"orla": {"model": "light",
  "cache": "preserve", "priority": 80}})``; ``models={"node": "light"}`` (by node id or
  name) overrides the model. A node of a subgraph without a model or priority of its own
  takes those of the node that encloses it (``models={"supervisor": "light"}`` maps every
  sub-agent ``supervisor`` runs); cache hints are not inherited. A node with no model
  uses ``default_model``. A ``models`` key that names no node is an error listing the
  nodes there are; for the functional API, whose tasks are found by reading the
  entrypoint's code, a key that names no task seen there is a warning.
- The conditional edges leaving one node become one branch node, labelled with the routing
  function, whose choices are the target node ids; each target is guarded by its choice.
  A conditional edge with a single target decides nothing and is drawn as a plain edge
  (``@entrypoint`` graphs draw their one node that way).
- A conditional edge whose routing function returns ``Send`` packets (seen in its return
  annotation or its source text) becomes a map node: its targets run once per packet, in
  the map's loop body, and what reads them gathers their results (``[each]``). A routing
  function whose source is unavailable and that is not annotated ``-> list[Send]`` shows
  as an ordinary branch.
- Cycles: an edge that goes back to a node on the current depth-first path from
  ``__start__`` is a loop edge. Loop edges are kept out of node dependencies (the plan
  stays a DAG, so the passes run) and listed in ``plan.meta["loop_edges"]``; the renderer
  draws them dashed, labelled ``loop`` (or ``<choice> (loop)`` from a branch).
- The functional API (``@entrypoint``/``@task``) exposes only the entrypoint as one node,
  so its plan has one stage; tasks are not visible in the graph.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import orla_sdk as orla
from orla_sdk import OrlaError
from orla_sdk.ir import (
    BackendSpec,
    BranchTest,
    Condition,
    Guard,
    Node,
    Param,
    Plan,
    StageSpec,
    TypeSpec,
)
from orla_sdk.passes import Pass

if TYPE_CHECKING:  # langgraph is read through the graph object; importing it costs ~1 s
    from langgraph.pregel import Pregel

START, END = "__start__", "__end__"
log = logging.getLogger("orla_langgraph")
INPUT_ID = "input:state"
NOT_RUNNABLE_REF = "orla_langgraph.plan:not_runnable"
LOOP_LABEL = "loop"


def not_runnable(*inputs: Any) -> NoReturn:
    """The body of every stage of a plan drawn from a LangGraph graph."""
    raise OrlaError("this plan was made by orla.plan_from_graph from a LangGraph graph: it "
                    "records the graph's topology for passes and diagrams and cannot be run "
                    "by orla.run; run the compiled graph itself (graph.invoke(...)).")


@dataclass(frozen=True)
class _Route:
    """One ``add_conditional_edges`` of the graph or of a subgraph."""

    prefix: str  # the subgraph's xray prefix ("" or "sub:")
    fn: Callable[..., Any] | None
    ends: tuple[str, ...] | None  # target ids, prefixed; None when LangGraph lists none
    send: bool

    def reaches(self, target: str) -> bool:
        if self.ends is None:
            return target.startswith(self.prefix)
        return any(target == end or target.startswith(end + ":") for end in self.ends)

    def end_of(self, target: str) -> str:
        ends = self.ends or ()
        return next((end for end in ends if target == end or target.startswith(end + ":")),
                    target)


@dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    conditional: bool


@dataclass(frozen=True)
class _Settings:
    """Where a node's orla settings come from: ``models=`` and the metadata of every node
    of the graph and its subgraphs, by prefixed id (enclosing nodes included)."""

    models: Mapping[str, str]
    metadata: Mapping[str, Mapping[str, Any] | None]


@dataclass(frozen=True)
class _Link:
    src: str
    dst: str
    kind: str  # "plain", "branch" or "send"
    end: str = ""  # for "send": the node (or subgraph) the packets go to


def plan_from_graph(graph: Pregel[Any, Any, Any, Any], *, name: str | None = None,
                    models: Mapping[str, str] | None = None,
                    backends: Sequence[BackendSpec] | None = None,
                    mapping: Mapping[str, Any] | None = None,
                    default_model: str | None = None,
                    passes: Sequence[Pass] | None = None) -> Plan:
    """The topology of a compiled LangGraph graph as an orla plan, annotated by ``passes``.

    ``backends``, ``mapping`` and ``default_model`` work as in ``orla.compile`` (with
    neither backends nor mapping, every logical model maps to the embedded llama.cpp
    engine). The plan is for passes and diagrams only: ``orla.run`` on it fails at its
    first stage with an ``OrlaError`` saying so.
    """
    drawn = graph.get_graph(xray=True)
    ids = [nid for nid in drawn.nodes if nid not in (START, END) and not _inner_end(nid)]
    enclosing = _node_metadata(graph)
    _check_model_keys(models or {}, ids, drawn.nodes, enclosing, graph)
    routes = _routes(graph, "")
    links = _classify(_through_inner_ends(drawn.edges), routes)
    loops = _back_edges(links)
    plan = Plan(name=name or graph.name or "langgraph", runnable=False)
    _add_nodes(plan, drawn.nodes, ids, links, loops, routes,
               _Settings(models or {}, enclosing))
    return orla.compile(plan, backends=backends, mapping=mapping, default_model=default_model,
                        passes=passes)


# ---- reading the graph -----------------------------------------------------------------
def _inner_end(nid: str) -> bool:
    """A subgraph's own ``__start__``/``__end__`` (``sub:__start__``)."""
    return ":" in nid and nid.rsplit(":", 1)[1] in (START, END)


def _through_inner_ends(edges: Sequence[Any]) -> list[_Edge]:
    """The drawn edges with each subgraph's ``__start__``/``__end__`` cut out: an edge
    into one is joined to every edge out of it (conditional if either is), in place."""
    joined = [_Edge(e.source, e.target, bool(e.conditional)) for e in edges]
    hubs = dict.fromkeys(n for e in joined for n in (e.source, e.target) if _inner_end(n))
    for hub in hubs:
        out = [e for e in joined if e.source == hub]
        joined = [through for e in joined if e.source != hub
                  for through in ([_Edge(e.source, o.target, e.conditional or o.conditional)
                                   for o in out] if e.target == hub else [e])]
    return list(dict.fromkeys(joined))


def _node_metadata(graph: Any, prefix: str = "") -> dict[str, Mapping[str, Any] | None]:
    """Every node's ``add_node`` metadata by prefixed id, through subgraphs (added as
    nodes or invoked inside one), enclosing nodes included."""
    builder = getattr(graph, "builder", None)
    found = {prefix + name: getattr(spec, "metadata", None)
             for name, spec in getattr(builder, "nodes", {}).items()}
    for namespace, subgraph in graph.get_subgraphs():
        found.update(_node_metadata(subgraph, f"{prefix}{namespace}:"))
    return found


def _check_model_keys(models: Mapping[str, str], ids: list[str], drawn: Mapping[str, Any],
                      enclosing: Mapping[str, Any], graph: Any) -> None:
    """A ``models`` key must name something: a node by id or name (enclosing nodes of
    subgraphs included), or a functional-API task."""
    nodes = {*ids, *enclosing}
    tasks = _task_names(graph)
    names = {*nodes, *tasks, *(drawn[nid].name for nid in ids),
             *(nid.rsplit(":", 1)[-1] for nid in nodes)}
    unknown = sorted(set(models) - names)
    if not unknown:
        return
    known = f"its nodes are {sorted(nodes)}" + (f", its tasks {sorted(tasks)}" if tasks
                                                else "")
    message = (f"models={{...}} names {unknown}, which graph {graph.name!r} does not have: "
               f"{known}. Key models by node id or name.")
    if getattr(graph, "builder", None) is None:  # the functional API: tasks are not all seen
        log.warning("%s (A task called through another function is not seen here: if one "
                    "of these names it, its calls are served by that name.)", message)
        return
    raise OrlaError(message)


def _task_names(graph: Any) -> set[str]:
    """The ``@task`` functions an ``@entrypoint`` graph's function refers to (its
    tasks, and theirs), by name: LangGraph draws none of them."""
    found: dict[str, Any] = {}
    pending = [getattr(node.bound, "func", None) for node in graph.nodes.values()]
    while pending:
        fn = pending.pop()
        for value in _referenced(fn):
            task_fn = getattr(value, "func", None)
            if type(value).__module__ == "langgraph.func" and callable(task_fn):
                name = getattr(task_fn, "__name__", "")
                if name and name not in found:
                    found[name] = task_fn
                    pending.append(task_fn)
    return set(found)


def _referenced(fn: Any) -> list[Any]:
    try:
        seen = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return []
    return [*seen.nonlocals.values(), *seen.globals.values()]


def _routes(graph: Any, prefix: str) -> dict[str, list[_Route]]:
    """Conditional edges by prefixed source id, from the graph's builder and subgraphs."""
    builder = getattr(graph, "builder", None)
    found: dict[str, list[_Route]] = {}
    if builder is None:
        return found
    for source, specs in getattr(builder, "branches", {}).items():
        for spec in specs.values():
            fn = getattr(spec.path, "func", None) or getattr(spec.path, "afunc", None)
            ends = None if spec.ends is None else tuple(
                prefix + str(end) for end in spec.ends.values())
            found.setdefault(prefix + source, []).append(
                _Route(prefix, fn, ends, fn is not None and _sends(fn)))
    for node_name, spec in getattr(builder, "nodes", {}).items():
        if getattr(spec.runnable, "builder", None) is not None:
            found.update(_routes(spec.runnable, f"{prefix}{node_name}:"))
    return found


def _sends(fn: Callable[..., Any]) -> bool:
    """Whether a routing function returns ``Send`` packets, as far as can be seen."""
    try:
        returns = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        returns = inspect.Signature.empty
    if returns is not inspect.Signature.empty and "Send" in str(returns):
        return True
    try:
        return "Send(" in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


def _route_of(routes: dict[str, list[_Route]], src: str, dst: str) -> _Route | None:
    """The conditional edge behind a drawn one: at ``src`` or, for a subgraph's last
    node, at the subgraph node that encloses it."""
    parts = src.split(":")
    for size in range(len(parts), 0, -1):
        for route in routes.get(":".join(parts[:size]), []):
            if route.reaches(dst):
                return route
    return None


def _classify(edges: Sequence[Any], routes: dict[str, list[_Route]]) -> list[_Link]:
    """Drawn edges as plain, branch or send links; a lone conditional target is plain."""
    targets: dict[str, set[str]] = {}
    for edge in edges:
        if edge.conditional:
            targets.setdefault(edge.source, set()).add(edge.target)
    links = []
    for edge in edges:
        route = _route_of(routes, edge.source, edge.target) if edge.conditional else None
        if route is not None and route.send:
            links.append(_Link(edge.source, edge.target, "send", route.end_of(edge.target)))
            continue
        branch = edge.conditional and len(targets[edge.source]) > 1
        links.append(_Link(edge.source, edge.target, "branch" if branch else "plain"))
    return links


def _back_edges(links: list[_Link]) -> set[_Link]:
    """Links that close a cycle: depth-first from ``__start__``, in drawing order."""
    succs: dict[str, list[_Link]] = {}
    for link in links:
        succs.setdefault(link.src, []).append(link)
    back: set[_Link] = set()
    state: dict[str, str] = {}  # "open" while on the path, then "done"

    def visit(nid: str) -> None:
        state[nid] = "open"
        for link in succs.get(nid, []):
            if state.get(link.dst) == "open":
                back.add(link)
            elif link.dst not in state:
                visit(link.dst)
        state[nid] = "done"

    for root in [START, *succs]:
        if root not in state:
            visit(root)
    return back


# ---- building the plan -----------------------------------------------------------------
def _add_nodes(plan: Plan, drawn: Mapping[str, Any], ids: list[str], links: list[_Link],
               loops: set[_Link], routes: dict[str, list[_Route]],
               settings: _Settings) -> None:
    forward = [link for link in links if link not in loops]
    scopes = _scopes(forward, ids)
    nodes: dict[str, Node] = {INPUT_ID: Node(id=INPUT_ID, kind="input", label="state",
                                             kwargs={"default": None})}
    for nid in ids:
        nodes[nid] = _stage_node(plan, nid, drawn[nid], settings, scopes.get(nid))
    for src in dict.fromkeys(link.src for link in links if link.kind != "plain"):
        for kind in ("branch", "send"):
            targets = list(dict.fromkeys(
                link.dst for link in links if link.src == src and link.kind == kind))
            if targets:
                node = _decision_node(src, kind, targets, routes)
                nodes[node.id] = node
    nodes["output"] = Node(id="output", kind="output", label="output")
    _wire(nodes, forward, scopes)
    plan.meta["loop_edges"] = [_loop_edge(link) for link in links if link in loops]
    plan.nodes = list(nodes.values())
    plan.nodes = plan.topological_order()


def _scopes(links: list[_Link], ids: list[str]) -> dict[str, str]:
    """The map each node runs in: ``Send`` targets, with their subgraph's nodes."""
    scopes: dict[str, str] = {}
    for link in links:
        if link.kind == "send":
            for nid in ids:
                if nid == link.end or nid.startswith(link.end + ":"):
                    scopes[nid] = f"map:{link.src}"
    return scopes


def _stage_node(plan: Plan, nid: str, drawn: Any, settings: _Settings,
                scope: str | None) -> Node:
    own = _orla_metadata(nid, drawn.metadata)
    model, priority = _inherited(nid, drawn, settings)
    fn = getattr(drawn.data, "func", None) or getattr(drawn.data, "afunc", None)
    site = _site(fn)
    key = f"langgraph:{nid}"
    plan.stages[key] = StageSpec(
        name=drawn.name, ref=NOT_RUNNABLE_REF, model=model, cache=own.get("cache"),
        agent=drawn.name, priority=priority, site=site,
        params=[Param(name="inputs", kind="var_positional", required=False,
                      type=TypeSpec(kind="any"))],
        doc=f"LangGraph node {nid!r}, runnable {_runnable_name(drawn.data, fn)}")
    return Node(id=nid, kind="stage", label=nid, stage=key, scope=scope, site=site)


def _inherited(nid: str, drawn: Any, settings: _Settings) -> tuple[str | None, int | None]:
    """A node's model and priority: its own (``models`` by id, then by name, then its
    metadata), else those of the nearest node enclosing it that has them."""
    model: str | None = None
    priority: int | None = None
    metadata = {**settings.metadata, nid: drawn.metadata}
    parts = nid.split(":")
    for size in range(len(parts), 0, -1):
        at = ":".join(parts[:size])
        name = drawn.name if size == len(parts) else parts[size - 1]
        own = _orla_metadata(at, metadata.get(at))
        model = model or settings.models.get(at) or settings.models.get(name) or own.get(
            "model")
        priority = own.get("priority") if priority is None else priority
    return model, priority


def _orla_metadata(nid: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = (metadata or {}).get("orla", {})
    if not isinstance(settings, Mapping):
        raise OrlaError(f'LangGraph node {nid!r} has metadata "orla" = {settings!r}; give a '
                        'dict such as {"model": "light", "cache": "preserve", "priority": 80}.')
    unknown = sorted(set(settings) - {"model", "cache", "priority"})
    checks = [("model", str), ("cache", str), ("priority", int)]
    wrong = [key for key, kind in checks
             if settings.get(key) is not None and (not isinstance(settings[key], kind)
                                                   or isinstance(settings[key], bool))]
    if unknown or wrong:
        raise OrlaError(f"LangGraph node {nid!r} has orla metadata {dict(settings)!r}; it "
                        "takes model (str), cache ('preserve' or 'flush') and priority "
                        "(int 0..100).")
    return dict(settings)


def _site(fn: Any) -> str | None:
    code = getattr(fn, "__code__", None)
    return f"{fn.__module__}:{code.co_firstlineno}" if code is not None else None


def _runnable_name(data: Any, fn: Any) -> str:
    if fn is not None:
        return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"
    return str(getattr(data, "name", None) or type(data).__name__)


def _decision_node(src: str, kind: str, targets: list[str],
                   routes: dict[str, list[_Route]]) -> Node:
    route = _route_of(routes, src, targets[0])
    fn = route.fn if route is not None else None
    fn_name = getattr(fn, "__name__", None)
    source = _plan_id(src)
    if kind == "send":
        return Node(id=f"map:{src}", kind="map", label=f"Send from {fn_name or src}",
                    args=[{"$ref": source}])
    ref = f"{fn.__module__}:{fn.__qualname__}" if fn is not None else None
    test = (BranchTest(op="call", fn=ref) if fn_name and ref and "<" not in ref
            else BranchTest(op="value"))
    label = fn_name or f"{src} next"
    return Node(id=f"branch:{src}", kind="branch", label=label, test=test,
                args=[{"$ref": source}], choices=[_plan_id(t) for t in targets])


def _plan_id(nid: str) -> str:
    return {START: INPUT_ID, END: "output"}.get(nid, nid)


def _wire(nodes: dict[str, Node], links: list[_Link], scopes: dict[str, str]) -> None:
    """Arguments and guards from the forward links."""
    plain: dict[str, list[str]] = {}
    guards: dict[str, list[Guard]] = {}
    for link in links:
        src, dst = _plan_id(link.src), _plan_id(link.dst)
        if link.kind == "plain":
            plain.setdefault(dst, []).append(src)
        elif link.kind == "branch":
            guards.setdefault(dst, []).append(
                [Condition(branch=f"branch:{link.src}", choices=[dst])])
    for dst, srcs in plain.items():
        node = nodes[dst]
        for src in dict.fromkeys(srcs):
            scope = scopes.get(src)
            inside = scope is not None and scopes.get(dst) == scope
            node.args.append({"$gather": src, "map": scope} if scope and not inside
                             else {"$ref": src})
    for dst, conditions in guards.items():
        # a node also reached by a plain edge runs either way: an empty guard always holds
        nodes[dst].guards = ([[]] if dst in plain else []) + conditions


def _loop_edge(link: _Link) -> dict[str, str]:
    src, dst = _plan_id(link.src), _plan_id(link.dst)
    if link.kind == "branch":
        return {"src": f"branch:{link.src}", "dst": dst, "label": f"{dst} ({LOOP_LABEL})"}
    if link.kind == "send":
        return {"src": f"map:{link.src}", "dst": dst, "label": f"Send ({LOOP_LABEL})"}
    return {"src": src, "dst": dst, "label": LOOP_LABEL}
