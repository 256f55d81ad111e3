"""The plan: orla's one intermediate representation.

A plan is a DAG of a handful of node kinds. Tracers and importers write it, passes
annotate it through each node's free ``meta`` mapping, and renderers, snapshots and the
runtime read it. Of the package, this module imports only ``refs``; drawing a plan is
``orla_sdk.render``'s work, outside the IR.

Argument templates
------------------
A node's ``args``/``kwargs`` are JSON templates. Plain JSON scalars are constants; a dict
with one of these keys stands for something else:

- ``{"$ref": node_id, "path": [...]}``: the value node ``node_id`` produced, or a field of
  it (``path`` walks attributes of a pydantic output, or list indices);
- ``{"$gather": node_id, "map": map_id, "path": [...]}``: the list of values a node
  inside map ``map_id`` produced, one per item;
- ``{"$oneof": [{"value": template, "when": [guard, ...]}, ...]}``: where branches
  re-converge, the alternative whose guard holds on the path the run took (guards as in
  ``Node.guards``, relative to the paths that reach the node);
- ``{"$tuple": [...]}``: a tuple; ``{"$dict": {...}}``: a dict whose keys start with "$"
  (its keys are taken literally); other lists and dicts are plain JSON holding templates;
- ``{"$enum": "module:Class", "value": v}`` and ``{"$model": "module:Class", "data": {...}}``:
  enum members and pydantic models passed as constants.
"""

from __future__ import annotations

import copy
import enum
import heapq
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from orla_sdk.refs import load_ref

PLAN_FORMAT: Literal["orla.plan/1"] = "orla.plan/1"

NodeKind = Literal["input", "stage", "branch", "map", "output"]
CacheControl = Literal["slots", "global_reset", "keep_alive", "prompt_key", "none"]
PRIORITY_RANGE = (0, 100)
# orla.run's own keywords: a plan's inputs cannot have these names
RUN_KEYWORDS = frozenset({"pool", "run_id", "checkpoint", "on_event"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TypeSpec(_Model):
    """The type of a value a node produces, as far as the tracer and runtime need it."""

    kind: Literal[
        "any", "str", "int", "float", "bool", "none", "literal", "enum", "model", "list", "dict"
    ]
    ref: str | None = None
    values: list[Any] | None = None
    item: TypeSpec | None = None
    fields: dict[str, TypeSpec] | None = None
    nullable: bool = False

    def enumerable(self) -> list[Any] | None:
        """The finite set of values this type can take, or None when it is open."""
        if self.kind == "bool":
            values: list[Any] = [True, False]
        elif self.kind in ("literal", "enum") and self.values is not None:
            values = list(self.values)
        else:
            return None
        return [*values, None] if self.nullable else values

    def describe(self) -> str:
        name = {
            "literal": f"Literal{self.values}",
            "enum": f"Enum {self.ref}",
            "model": f"model {self.ref}",
            "list": f"list[{self.item.describe() if self.item else 'Any'}]",
        }.get(self.kind, self.kind)
        return f"{name} | None" if self.nullable else name


class ToolSpec(_Model):
    """A tool a stage may call: its name, description, JSON schema and where it lives."""

    name: str
    ref: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    effect: bool = False  # changes the world: called at most once per call key
    pure: bool = False  # equal arguments give an equal result (for ttl_s seconds, if given)
    ttl_s: float | None = None


class Param(_Model):
    """One parameter of a stage's signature."""

    name: str
    kind: Literal["positional_only", "positional_or_keyword", "var_positional", "keyword_only",
                  "var_keyword"]
    required: bool
    type: TypeSpec


class PriorityRule(_Model):
    """A priority computed at run time from a stage's bound arguments.

    ``field``: read ``arg`` (and ``path`` inside it) and look the value up in ``values``.
    ``call``: call the function ``fn`` with the stage's bound arguments.
    """

    kind: Literal["field", "call"]
    arg: str | None = None
    path: list[str] = Field(default_factory=list)
    values: dict[str, int] = Field(default_factory=dict)
    default: int = 50
    fn: str | None = None

    def evaluate(self, arguments: dict[str, Any],
                 resolve: Callable[[str], Any] = load_ref) -> int:
        """The priority for one call, from the stage's bound arguments."""
        if self.kind == "call" and self.fn is not None:
            return int(resolve(self.fn)(**arguments))
        value = arguments.get(self.arg or "")
        for name in self.path:
            value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
        key = value.value if isinstance(value, enum.Enum) else value
        return self.values.get(str(key), self.default)


class StageSpec(_Model):
    """What the ``@stage`` decorator declared about one function."""

    name: str
    ref: str
    is_async: bool = False
    model: str | None = None
    cache: str | None = None
    agent: str | None = None  # the agent making its calls: a slot of its own in each run
    priority: int | PriorityRule | None = None
    tools: list[ToolSpec] = Field(default_factory=list)
    alternatives: list[str] = Field(default_factory=list)  # logical models to reroute to
    params: list[Param] = Field(default_factory=list)
    output: TypeSpec = Field(default_factory=lambda: TypeSpec(kind="any"))
    site: str | None = None
    doc: str = ""


class BranchTest(_Model):
    """How a branch node computes the value it switches on.

    ``value``: the value of its single argument (a typed stage output or field).
    ``call``: the result of calling ``fn`` on its arguments (``orla.cond``/``orla.switch``).
    """

    op: Literal["value", "call"]
    fn: str | None = None


class Condition(_Model):
    """Holds when branch node ``branch`` ran and took one of ``choices``."""

    branch: str
    choices: list[Any]


Guard = list[Condition]
"""All conditions must hold. A node runs when any one of its guards holds."""


class Node(_Model):
    """One step of the plan. ``args``/``kwargs`` are argument templates (an input node
    keeps its default, if any, as ``kwargs["default"]``); ``guards`` say when it runs."""

    id: str
    kind: NodeKind
    label: str
    site: str | None = None
    scope: str | None = None
    guards: list[Guard] = Field(default_factory=list)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    stage: str | None = None
    test: BranchTest | None = None
    choices: list[Any] = Field(default_factory=list)
    output: TypeSpec = Field(default_factory=lambda: TypeSpec(kind="any"))
    meta: dict[str, Any] = Field(default_factory=dict)

    def refs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (argument name, reference) in this node's argument templates."""
        for index, template in enumerate(self.args):
            for ref in iter_refs(template):
                yield str(index), ref
        for name, template in self.kwargs.items():
            for ref in iter_refs(template):
                yield name, ref


class Capabilities(_Model):
    """What a backend can serve; the validate pass checks stages against these."""

    tool_calling: bool = True
    json_schema: bool = True
    cache_control: CacheControl = "none"
    metrics: bool = False


class Scheduling(_Model):
    """How a backend's queue serves waiting requests (see ``orla_sdk.runtime.scheduler``).

    Policies are named ("fcfs", "priority", "sjf") or "module:Class" references to
    ``orla.Policy`` subclasses. ``stage_policy`` picks which stage's sub-queue goes next;
    ``request_policy`` orders each sub-queue, unless ``stage_policies`` names one for that
    stage. Stages that name alternatives leave for them once ``queue_bound`` requests
    wait here.
    """

    limit: int | None = Field(default=None, ge=1)
    stage_policy: str = "priority"
    request_policy: str = "priority"
    stage_policies: dict[str, str] = Field(default_factory=dict)
    queue_bound: int | None = Field(default=None, ge=0)


class BackendSpec(_Model):
    """A declared backend: an engine the runtime can send requests to. ``options`` are
    engine settings that are not a url (the simulator's clock and seed)."""

    name: str
    kind: Literal["openai", "llamacpp", "vllm", "sglang", "ollama", "sim"]
    url: str | None = None
    models: list[str] | None = None
    capabilities: Capabilities = Field(default_factory=Capabilities)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    options: dict[str, Any] = Field(default_factory=dict)


class Target(_Model):
    """Where a logical model name is served: a backend, a model id there, and parameters."""

    kind: Literal["target"] = "target"
    backend: str
    model: str
    params: dict[str, Any] = Field(default_factory=dict)

    def key(self) -> str:
        return f"{self.backend}/{self.model}"


class MapperSpec(_Model):
    """A stage mapper that picks one of ``candidates`` at run time, possibly after asking
    the models in ``consults``."""

    kind: Literal["mapper"] = "mapper"
    ref: str
    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    candidates: list[str] = Field(default_factory=list)
    consults: list[str] = Field(default_factory=list)


class Edge(_Model):
    """A derived edge, for readers that draw or walk the DAG (not serialized)."""

    src: str
    dst: str
    kind: Literal["data", "control"]
    label: str = ""


class Plan(_Model):
    """A workflow as a DAG of nodes, with the stages, backends and mapping it uses.

    ``runnable=False`` marks a plan an adapter read from another framework's app: its
    stages are that framework's code, so ``orla.run`` refuses it and a stage may name no
    model (it may make no model call)."""

    format: Literal["orla.plan/1"] = PLAN_FORMAT
    name: str
    workflow: str | None = None
    nodes: list[Node] = Field(default_factory=list)
    stages: dict[str, StageSpec] = Field(default_factory=dict)
    backends: list[BackendSpec] = Field(default_factory=list)
    mapping: dict[str, Target | MapperSpec] = Field(default_factory=dict)
    default_model: str | None = None
    paths: int = 1
    runnable: bool = True  # False: another framework runs the stages; orla only serves them
    meta: dict[str, Any] = Field(default_factory=dict)
    _objects: dict[str, Any] = PrivateAttr(default_factory=dict)

    # ---- lookup -------------------------------------------------------------------
    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"plan {self.name!r} has no node {node_id!r}")

    def by_id(self) -> dict[str, Node]:
        return {node.id: node for node in self.nodes}

    def stage_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.kind == "stage"]

    def stage_of(self, node: Node) -> StageSpec:
        if node.stage is None:
            raise KeyError(f"node {node.id!r} is a {node.kind} node, not a stage")
        return self.stages[node.stage]

    def resolve(self, ref: str) -> Any:
        """The live object behind a reference: the one seen while tracing, else imported."""
        # read from pydantic's store of private attributes: ``self._objects`` goes through
        # its attribute hook (a microsecond), on the path of every stage of every run
        objects: dict[str, Any] = self.__pydantic_private__["_objects"]  # type: ignore[index]
        try:
            return objects[ref]
        except KeyError:
            return load_ref(ref)

    def clone(self) -> Plan:
        """A deep copy of the plan's data that shares its live objects (they are code,
        not data: copying them would be wrong for some and slow for all)."""
        data = {name: copy.deepcopy(getattr(self, name)) for name in type(self).model_fields}
        twin = type(self).model_construct(**data)
        twin.attach(self._objects)
        return twin

    def attach(self, objects: dict[str, Any]) -> None:
        """Remember live objects (stages, tools, predicates) so ``resolve`` needs no import."""
        self._objects.update(objects)

    def logical_model(self, node: Node) -> str | None:
        """The logical model name a stage node asks for (its own, else the default)."""
        return self.stage_of(node).model or self.default_model

    def targets_of(self, name: str) -> list[Target]:
        """The targets that may serve a logical name: one, or a mapper's candidates."""
        mapped = self.mapping.get(name)
        if isinstance(mapped, Target):
            return [mapped]
        if isinstance(mapped, MapperSpec):
            return [t for c in mapped.candidates
                    if isinstance(t := self.mapping.get(c), Target)]
        return []

    def backend(self, name: str) -> BackendSpec | None:
        return next((b for b in self.backends if b.name == name), None)

    # ---- graph --------------------------------------------------------------------
    def edges(self) -> list[Edge]:
        """Data edges from argument references, control edges from guards."""
        edges: list[Edge] = []
        for node in self.nodes:
            seen: set[tuple[str, str]] = set()
            for _arg, ref in node.refs():
                src = ref.get("$ref") or ref["$gather"]
                label = _edge_label(ref)
                if (src, label) not in seen:
                    seen.add((src, label))
                    edges.append(Edge(src=src, dst=node.id, kind="data", label=label))
            parents = control_parents(node)
            for branch, choices in parents.items():
                label = " | ".join(_choice_label(c) for c in choices)
                edges.append(Edge(src=branch, dst=node.id, kind="control", label=label))
            for branch in chooser_branches(node, constants_only=True):
                if branch not in parents:
                    edges.append(Edge(src=branch, dst=node.id, kind="control",
                                      label="picks argument"))
        return edges

    def predecessors(self) -> dict[str, list[str]]:
        """The nodes each node waits for: the sources of its arguments and its guards."""
        return {node.id: list(dependencies(node)) for node in self.nodes}

    def successors(self, deps: Mapping[str, Iterable[str]] | None = None
                   ) -> dict[str, list[str]]:
        """Each node's dependents; ``deps``: each node's dependencies, where known."""
        succs: dict[str, dict[str, None]] = {node.id: {} for node in self.nodes}
        for node in self.nodes:
            for src in dependencies(node) if deps is None else deps[node.id]:
                if src in succs:
                    succs[src][node.id] = None
        return {nid: list(dsts) for nid, dsts in succs.items()}

    def topological_order(self, deps: Mapping[str, Iterable[str]] | None = None
                          ) -> list[Node]:
        """Nodes in an order where each comes after everything it depends on; plan order
        breaks ties. Nodes on a cycle are left out (the validate pass reports cycles).
        ``deps``: each node's dependencies, where the caller has them already."""
        deps = deps or {n.id: dependencies(n) for n in self.nodes}
        by_id = self.by_id()
        waiting = {n.id: sum(1 for d in deps[n.id] if d in by_id) for n in self.nodes}
        succs = self.successors(deps)
        position = {n.id: i for i, n in enumerate(self.nodes)}
        ready_heap = [(position[n.id], n.id) for n in self.nodes if waiting[n.id] == 0]
        heapq.heapify(ready_heap)
        order: list[Node] = []
        while ready_heap:
            _, nid = heapq.heappop(ready_heap)
            order.append(by_id[nid])
            for nxt in succs[nid]:
                waiting[nxt] -= 1
                if waiting[nxt] == 0:
                    heapq.heappush(ready_heap, (position[nxt], nxt))
        return order

    # ---- serialization ------------------------------------------------------------
    def to_json(self) -> str:
        """Canonical JSON: sorted keys, two-space indent; equal plans give equal bytes."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        data["format"] = PLAN_FORMAT
        return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.model_validate_json(text)



def iter_refs(template: Any) -> Iterator[dict[str, Any]]:
    """Yield every ``$ref``/``$gather`` dict inside an argument template."""
    if isinstance(template, list):
        for value in template:
            yield from iter_refs(value)
    elif isinstance(template, dict):
        if "$ref" in template or "$gather" in template:
            yield template
        elif "$oneof" in template:
            for alternative in template["$oneof"]:
                yield from iter_refs(alternative["value"])
        elif "$dict" in template:
            yield from iter_refs(list(template["$dict"].values()))
        elif "$tuple" in template:
            yield from iter_refs(template["$tuple"])
        elif not any(key.startswith("$") for key in template):  # $model, $enum: constants
            yield from iter_refs(list(template.values()))


def dependencies(node: Node) -> dict[str, None]:
    """Ids of the nodes ``node`` depends on, in a stable order, without repeats."""
    deps: dict[str, None] = {}
    for _, ref in node.refs():
        deps[ref.get("$ref") or ref["$gather"]] = None
    for guard in node.guards:
        for condition in guard:
            deps[condition.branch] = None
    for branch in chooser_branches(node):
        deps[branch] = None
    if node.scope:
        deps[node.scope] = None
    return deps


def chooser_branches(node: Node, constants_only: bool = False) -> dict[str, None]:
    """Branches whose choice picks one of the node's ``$oneof`` arguments (with
    ``constants_only``, only where some alternative is a constant, not a node's output)."""
    found: dict[str, None] = {}

    def walk(template: Any) -> None:
        if isinstance(template, list):
            for value in template:
                walk(value)
        elif isinstance(template, dict):
            alternatives = template.get("$oneof", [])
            if not constants_only or any(not list(iter_refs(a["value"])) for a in alternatives):
                for alternative in alternatives:
                    for guard in alternative["when"]:
                        found.update({c["branch"]: None for c in guard})
            for value in template.values():
                walk(value)

    walk(node.args)
    walk(list(node.kwargs.values()))
    return found


def control_parents(node: Node) -> dict[str, list[Any]]:
    """For drawing: the nearest condition of each guard, merged by branch."""
    parents: dict[str, list[Any]] = {}
    for guard in node.guards:
        if guard:
            last = guard[-1]
            choices = parents.setdefault(last.branch, [])
            choices.extend(c for c in last.choices if c not in choices)
    return parents


def _edge_label(ref: dict[str, Any]) -> str:
    path = "".join(f".{p}" for p in ref.get("path", []))
    return f"[each]{path}" if "$gather" in ref else path


def _choice_label(choice: Any) -> str:
    return json.dumps(choice) if not isinstance(choice, str) else choice
