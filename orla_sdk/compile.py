"""``orla.compile``: trace a workflow into a plan, configure it, and run the passes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orla_sdk.backends.declare import DEFAULT_LOCAL_MODEL, llamacpp
from orla_sdk.context import active_tracer
from orla_sdk.errors import TraceError
from orla_sdk.ir import BackendSpec, Plan, Target
from orla_sdk.mapping import StageMapper, normalize_mapping
from orla_sdk.merge import merge_paths
from orla_sdk.passes import DEFAULT_PASSES
from orla_sdk.refs import ref_of
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
    tracer = Tracer(name, fn.__code__)
    tracer.run_all(fn, params, max_paths)
    return merge_paths(tracer, name, ref_of(fn))


def compile(workflow: Workflow[..., Any] | Callable[..., Any], *,
            backends: Sequence[BackendSpec] | None = None,
            mapping: Mapping[str, Any] | None = None,
            mapper: StageMapper | None = None,
            default_model: str | None = None,
            passes: Sequence[Callable[[Plan], Plan]] | None = None,
            max_paths: int = DEFAULT_MAX_PATHS) -> Plan:
    """Compile a workflow into an optimized plan.

    backends: the engines stages may run on (``orla.backends.llamacpp()``, ...).
    mapping: logical model name -> ``orla.Target``, "backend/model", or a StageMapper.
    mapper: a StageMapper for every stage that declares no model.
    passes: the pipeline; defaults to ``orla.passes.DEFAULT_PASSES``.

    With neither backends nor mapping (here or on ``@orla.workflow``), every logical model
    runs on the embedded llama.cpp engine.
    """
    plan = trace(workflow, max_paths=max_paths)
    if isinstance(workflow, Workflow):
        backends = backends if backends is not None else workflow.backends
        mapping = mapping if mapping is not None else workflow.mapping
        default_model = default_model or workflow.default_model
    _configure(plan, backends, mapping, mapper, default_model)
    for run_pass in (DEFAULT_PASSES if passes is None else passes):
        plan = run_pass(plan)
    return plan


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
