"""``orla.compile``: trace a workflow (or adapt an app object) into a plan, configure its
backends and mapping, and run the passes; ``orla.render`` draws what it compiles."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orla_sdk.adapters import adapter_for, find_adapter
from orla_sdk.backends.declare import DEFAULT_LOCAL_MODEL, llamacpp
from orla_sdk.context import active_tracer
from orla_sdk.errors import TraceError
from orla_sdk.ir import RUN_KEYWORDS, BackendSpec, Plan, Target
from orla_sdk.mapping import StageMapper, normalize_mapping
from orla_sdk.merge import merge_paths
from orla_sdk.passes import Pass, run_passes
from orla_sdk.refs import ref_of
from orla_sdk.render import render_plan
from orla_sdk.trace import DEFAULT_MAX_PATHS, Tracer
from orla_sdk.workflow import Workflow

AUTO_MODEL = "auto"


def trace(workflow: Workflow[..., Any] | Callable[..., Any], *,
          max_paths: int = DEFAULT_MAX_PATHS) -> Plan:
    """Trace every branch path of a workflow into one plan, before any pass runs."""
    fn = workflow.fn if isinstance(workflow, Workflow) else workflow
    if not inspect.isfunction(fn):
        raise TraceError(f"orla.compile takes a @orla.workflow or a plain function, not "
                         f"{type(fn).__name__} {fn!r}.")
    name = workflow.name if isinstance(workflow, Workflow) else fn.__name__
    if active_tracer.get() is not None:
        raise TraceError("orla.compile was called while another workflow is traced; "
                         "compile workflows outside workflow functions.")
    params = list(inspect.signature(fn).parameters.values())
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TraceError(f"workflow {name!r} takes *{p.name}; declare each input as a "
                             "named parameter so the plan can name it.")
        if p.name in RUN_KEYWORDS:
            raise TraceError(
                f"{fn.__code__.co_filename}:{fn.__code__.co_firstlineno}: workflow {name!r} "
                f"has an input named {p.name!r}, which orla.run takes as its own keyword. "
                f"Fix: rename the parameter (none of {sorted(RUN_KEYWORDS)}).")
    tracer = Tracer(name, fn.__code__)
    tracer.run_all(fn, params, max_paths)
    return merge_paths(tracer, name, ref_of(fn))


def compile(target: Any, *, backends: Sequence[BackendSpec] | None = None,
            mapping: Mapping[str, Any] | None = None, mapper: StageMapper | None = None,
            default_model: str | None = None, passes: Sequence[Pass] | None = None,
            max_paths: int = DEFAULT_MAX_PATHS, **options: Any) -> Plan:
    """Compile a workflow, a plan, or an app object an adapter accepts into an optimized plan.

    target: an ``@orla.workflow`` or plain function (traced), an ``orla.Plan`` (a copy is
    configured), or an app object of another framework (a compiled LangGraph graph, an
    AutoGen team: its installed adapter reads it; ``options`` such as ``models=`` go there).
    backends: the engines stages may run on (``orla.backends.llamacpp()``, ...).
    mapping: logical model name -> ``orla.Target``, "backend/model", or a StageMapper.
    mapper: a StageMapper for every stage that declares no model.
    passes: the pipeline; defaults to ``orla.passes.DEFAULT_PASSES``.

    With neither backends nor mapping (here, on ``@orla.workflow`` or in the plan), every
    logical model runs on the embedded llama.cpp engine.
    """
    if not _orla_own(target):
        adapter = adapter_for(target)
        if adapter is None and not callable(target):
            adapter = find_adapter(target, "orla.compile")  # raises, naming what to install
        if adapter is not None:
            return adapter.compile(target, backends=backends, mapping=mapping,
                                   default_model=default_model, passes=passes, **options)
    if options:
        raise TypeError(f"orla.compile got unknown options {sorted(options)}")
    if isinstance(target, Plan):
        plan = target.clone()
        if backends is None and mapping is None and (plan.backends or plan.mapping):
            backends, mapping = plan.backends, plan.mapping
    else:
        plan = trace(target, max_paths=max_paths)
    if isinstance(target, Workflow):
        backends = backends if backends is not None else target.backends
        mapping = mapping if mapping is not None else target.mapping
        default_model = default_model or target.default_model
    _configure(plan, backends, mapping, mapper, default_model or plan.default_model)
    return run_passes(plan, passes)


def _orla_own(target: Any) -> bool:
    """A plan, a workflow or a plain function: orla compiles these without an adapter."""
    return isinstance(target, Plan | Workflow) or inspect.isfunction(target)


def render(target: Any, path: str, **options: Any) -> str:
    """Draw a plan, or what ``orla.compile(target, **options)`` makes of a workflow or an
    app object, to ``path``; the suffix picks the format (.svg, .png, .pdf, .dot or .gv).
    Returns the path written."""
    plan = target if isinstance(target, Plan) and not options else compile(target, **options)
    return render_plan(plan, path)


def _configure(plan: Plan, backends: Sequence[BackendSpec] | None,
               mapping: Mapping[str, Any] | None, mapper: StageMapper | None,
               default_model: str | None) -> None:
    if backends is None and mapping is None:
        local = llamacpp()
        backends = [local]
        names = {plan.stages[n.stage].model for n in plan.stage_nodes() if n.stage}
        if mapper is not None:
            names.update([*mapper.candidates(), *mapper.consults()])
        elif any(plan.stages[n.stage].model is None for n in plan.stage_nodes() if n.stage):
            default_model = default_model or "default"
            names.add(default_model)
        mapping = {name: Target(backend=local.name, model=DEFAULT_LOCAL_MODEL)
                   for name in sorted(n for n in names if n)}
    plan.backends = list(backends or [])
    plan.mapping = normalize_mapping(mapping or {})
    if mapper is not None:
        plan.mapping[AUTO_MODEL] = mapper.to_spec()
        default_model = default_model or AUTO_MODEL
    plan.default_model = default_model
