"""Validate: find every problem of a plan at once, each with its stage, line and fix."""

from __future__ import annotations

from orla_sdk.errors import PlanValidationError, Problem
from orla_sdk.ir import (
    PRIORITY_RANGE,
    MapperSpec,
    Node,
    Param,
    Plan,
    PriorityRule,
    Target,
    chooser_branches,
)

_STRUCTURED = {"model", "literal", "enum", "list", "dict", "bool", "int", "float"}


def validate(plan: Plan) -> Plan:
    """Raise ``PlanValidationError`` listing all problems; return the plan unchanged."""
    problems = _graph_problems(plan)
    for node in plan.stage_nodes():
        problems.extend(_stage_problems(plan, node))
    if problems:
        raise PlanValidationError(problems)
    return plan


def _graph_problems(plan: Plan) -> list[Problem]:
    ids = {n.id for n in plan.nodes}
    problems = [
        Problem(node.id, node.site, f"references unknown node {src!r}.",
                "rebuild the plan; a hand-edited plan must only reference its own nodes")
        for node in plan.nodes for _, ref in node.refs()
        if (src := ref.get("$ref") or ref["$gather"]) not in ids
    ]
    problems += _loop_choices_gathered(plan)
    cycle = _find_cycle(plan)
    if cycle:
        problems.append(Problem(cycle[0], plan.node(cycle[0]).site,
                                f"is on a cycle: {' -> '.join(cycle)}.",
                                "a plan must be a DAG; bound loops with range(N)"))
    return problems


def _loop_choices_gathered(plan: Plan) -> list[Problem]:
    """A value a branch inside a loop picks cannot be collected after the loop: each item
    may take another side, and one ``$oneof`` cannot say which."""
    scope_of = {n.id: n.scope for n in plan.nodes}
    problems = []
    for node in plan.nodes:
        inner = sorted(b for b in chooser_branches(node)
                       if scope_of.get(b) is not None and scope_of.get(b) != node.scope)
        if inner:
            problems.append(Problem(
                node.id, node.site, f"collects values that branch {inner[0]!r} picks inside a "
                "loop.", "compute the per-item value in one stage inside the loop body and "
                "collect that stage's output"))
    return problems


def _find_cycle(plan: Plan) -> list[str] | None:
    """A cycle, if any: nodes a topological order leaves out each wait on another such
    node, so walking back through them must come round to one already seen."""
    ordered = {n.id for n in plan.topological_order()}
    stuck = [n.id for n in plan.nodes if n.id not in ordered]
    if not stuck:
        return None
    preds = plan.predecessors()
    walk = [stuck[0]]
    while True:
        nxt = next(p for p in preds[walk[-1]] if p in preds and p not in ordered)
        if nxt in walk:
            cycle = walk[walk.index(nxt):]
            return [*reversed(cycle), cycle[-1]]
        walk.append(nxt)


def _stage_problems(plan: Plan, node: Node) -> list[Problem]:
    spec = plan.stage_of(node)
    problems = [Problem(node.id, node.site, msg, fix) for msg, fix in _argument_problems(
        spec.params, len(node.args), list(node.kwargs))]
    if spec.cache not in (None, "preserve", "flush"):
        problems.append(Problem(node.id, spec.site, f'has cache={spec.cache!r}.',
                                'use cache="preserve", cache="flush", or leave it out'))
    problems.extend(Problem(node.id, spec.site, msg, fix)
                    for msg, fix in _priority_problems(spec.priority, spec.params))
    model = spec.model or plan.default_model
    # in a plan another framework runs, a stage with no model is one that calls none
    if model is not None or plan.runnable:
        problems.extend(Problem(node.id, node.site, msg, fix) for msg, fix in
                        _mapping_problems(plan, model, bool(spec.tools),
                                          spec.output.kind in _STRUCTURED))
    for alternative in spec.alternatives:
        problems.extend(Problem(node.id, node.site, f"alternative {alternative!r} {msg}", fix)
                        for msg, fix in _alternative_problems(plan, alternative))
    return problems


def _alternative_problems(plan: Plan, name: str) -> list[tuple[str, str]]:
    if not isinstance(plan.mapping.get(name), Target):
        return [("is not mapped to a backend and model.",
                 f"map {name!r} in orla.compile(mapping=...) or drop it from alternatives")]
    return []


def _argument_problems(params: list[Param], n_args: int,
                       kwargs: list[str]) -> list[tuple[str, str]]:
    positional = [p for p in params if p.kind in ("positional_only", "positional_or_keyword")]
    takes_varargs = any(p.kind == "var_positional" for p in params)
    takes_varkw = any(p.kind == "var_keyword" for p in params)
    names = [p.name for p in params if p.kind not in ("var_positional", "var_keyword")]
    given = {p.name for p in positional[:n_args]}
    signature = f"({', '.join(names)})"
    problems = []
    if n_args > len(positional) and not takes_varargs:
        problems.append((f"is called with {n_args} positional argument(s) but takes "
                         f"{len(positional)} {signature}.", "drop the extra arguments"))
    for name in kwargs:
        if name in given:
            problems.append((f"gets argument {name!r} twice (by position and by name).",
                             f"pass {name!r} once"))
        elif name not in names and not takes_varkw:
            problems.append((f"has no parameter {name!r}; it takes {signature}.",
                             "rename the argument or add the parameter"))
    missing = [p.name for p in params if p.required and p.name not in given
               and p.name not in kwargs]
    if missing:
        problems.append((f"is called without required argument(s) {', '.join(missing)}.",
                         f"pass {', '.join(missing)} in the call"))
    return problems


def _priority_problems(priority: int | PriorityRule | None,
                       params: list[Param]) -> list[tuple[str, str]]:
    low, high = PRIORITY_RANGE
    fix = f"use a whole number from {low} (served last) to {high} (served first)"
    if isinstance(priority, int):
        return [] if low <= priority <= high else [(f"has priority={priority}.", fix)]
    if not isinstance(priority, PriorityRule):
        return []
    problems = [(f"priority rule maps {k!r} to {v}.", fix)
                for k, v in {**priority.values, "default": priority.default}.items()
                if not low <= v <= high]
    names = [p.name for p in params]
    if priority.kind == "field" and priority.arg not in names:
        problems.append((f"priority rule reads argument {priority.arg!r}, which the stage "
                         f"does not take ({', '.join(names)}).",
                         "name one of the stage's parameters in priority_by(...)"))
    return problems


def _mapping_problems(plan: Plan, name: str | None, has_tools: bool,
                      structured: bool) -> list[tuple[str, str]]:
    known = ", ".join(sorted(plan.mapping)) or "none"
    if name is None:
        return [("declares no model and the plan has no default model.",
                 "pass model=... to @stage, or default_model=... to orla.compile")]
    mapped = plan.mapping.get(name)
    if mapped is None:
        return [(f"uses unknown model {name!r} (mapped names: {known}).",
                 f"add {name!r} to mapping= in orla.compile, or use a mapped name")]
    problems = []
    targets: list[Target] = [mapped] if isinstance(mapped, Target) else []
    if isinstance(mapped, MapperSpec):
        for candidate in mapped.candidates:
            target = plan.mapping.get(candidate)
            if isinstance(target, Target):
                targets.append(target)
            else:
                problems.append((f"is routed by {mapped.name!r} to {candidate!r}, which is "
                                 "not mapped to a backend and model.",
                                 f"map {candidate!r} to an orla.Target"))
        for consulted in mapped.consults:
            if not isinstance(plan.mapping.get(consulted), Target):
                problems.append((f"is routed by {mapped.name!r}, which asks {consulted!r}; "
                                 "that name is not mapped to a backend and model.",
                                 f"map {consulted!r} to an orla.Target"))
    for target in targets:
        problems.extend(_target_problems(plan, target, has_tools, structured))
    return problems


def _target_problems(plan: Plan, target: Target, has_tools: bool,
                     structured: bool) -> list[tuple[str, str]]:
    backend = plan.backend(target.backend)
    if backend is None:
        declared = ", ".join(b.name for b in plan.backends) or "none"
        return [(f"is mapped to backend {target.backend!r}, which is not declared "
                 f"(declared: {declared}).", "add it to backends= in orla.compile")]
    caps = backend.capabilities
    problems = []
    if backend.models is not None and target.model not in backend.models:
        problems.append((f"is mapped to model {target.model!r}, which backend "
                         f"{backend.name!r} does not serve ({', '.join(backend.models)}).",
                         "map it to one of those models or list the model on the backend"))
    if has_tools and not (caps.tool_calling or caps.json_schema):
        problems.append((f"has tools, but backend {backend.name!r} can neither call tools "
                         "nor constrain output to a JSON schema.",
                         "map the stage to a backend with tool calling, or drop its tools"))
    if structured and not caps.json_schema:
        problems.append((f"returns structured output, but backend {backend.name!r} has no "
                         "JSON-schema mode.",
                         "map the stage to a backend with json_schema, or return str"))
    return problems
