"""``orla.serve(app)``: pick the integration for a LangGraph graph or an AutoGen team."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orla_sdk.integrations.report import Price, Report
from orla_sdk.integrations.session import ServingSession
from orla_sdk.ir import BackendSpec, Plan
from orla_sdk.passes import DEFAULT_PASSES
from orla_sdk.runtime.pool import BackendPool


def serve(app: Any, *, backends: Sequence[BackendSpec] | None = None,
          mapping: Mapping[str, Any] | None = None, models: Mapping[str, str] | None = None,
          default_model: str | None = None, prices: Mapping[str, Price] | None = None,
          tracer: Any = None, pool: BackendPool | None = None, name: str | None = None,
          passes: Sequence[Callable[[Plan], Plan]] = DEFAULT_PASSES, **options: Any) -> Any:
    """``app`` served by orla: a compiled LangGraph graph (Graph or functional API) gives
    a ``ServedGraph``; an AutoGen team gives a ``ServedTeam``.

    ``backends``, ``mapping`` and ``default_model`` work as in ``orla.compile`` (with
    neither, every logical model maps to an embedded llama.cpp engine); ``models`` maps
    node names (or agent names) to logical models; ``prices`` (by backend name) give the
    report's cost estimate; ``tracer`` receives each invocation's OpenTelemetry spans;
    ``pool`` is a ``BackendPool`` of the caller's (by default the session makes one).
    """
    module = type(app).__module__
    if module.startswith("langgraph."):
        return _serve_graph(app, backends=backends, mapping=mapping, models=models,
                            default_model=default_model, prices=prices, tracer=tracer,
                            pool=pool, name=name, passes=passes, **options)
    if module.startswith("autogen_agentchat."):
        from orla_sdk.integrations.autogen import serve_team

        return serve_team(app, backends=backends, mapping=mapping, models=models,
                          default_model=default_model, prices=prices, tracer=tracer,
                          pool=pool, name=name, passes=passes, **options)
    raise TypeError(f"orla.serve takes a compiled LangGraph graph (StateGraph(...).compile() "
                    f"or an @entrypoint) or an AutoGen team, not {type(app).__name__} from "
                    f"{module}; for an orla workflow use orla.compile and orla.run.")


def _serve_graph(graph: Any, *, backends: Sequence[BackendSpec] | None,
                 mapping: Mapping[str, Any] | None, models: Mapping[str, str] | None,
                 default_model: str | None, prices: Mapping[str, Price] | None, tracer: Any,
                 pool: BackendPool | None, name: str | None,
                 passes: Sequence[Callable[[Plan], Plan]], **options: Any) -> Any:
    from orla_sdk.integrations.langgraph import ServedGraph
    from orla_sdk.langgraph_plan import plan_from_graph

    if options:
        raise TypeError(f"orla.serve(graph) got unknown options {sorted(options)}")
    plan = plan_from_graph(graph, name=name, models=models, backends=backends,
                           mapping=mapping, default_model=default_model, passes=passes)
    session = ServingSession(plan, pool=pool, models=models, report=Report(prices))
    return ServedGraph(graph, session, name=plan.name, tracer=tracer)
