"""The adapter that registers LangGraph apps with orla (entry point ``orla_sdk.adapters``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orla_sdk import BackendPool, OrlaError, Plan, Price, Report
from orla_sdk.agents import AgentPolicy
from orla_sdk.ir import BackendSpec
from orla_sdk.passes import Pass
from orla_sdk.serving import ServingSession

if TYPE_CHECKING:
    from orla_langgraph.served import ServedGraph


class LangGraphAdapter:
    """Compiled LangGraph graphs (``StateGraph(...).compile()``, ``@entrypoint``)."""

    name = "langgraph"

    def accepts(self, app: object) -> bool:
        return type(app).__module__.split(".")[0] == "langgraph"

    def compile(self, app: Any, **options: Any) -> Plan:
        from orla_langgraph.plan import plan_from_graph  # imports LangGraph: only when used

        return plan_from_graph(_compiled(app), **options)

    def serve(self, app: Any, *, backends: Sequence[BackendSpec] | None = None,
              mapping: Mapping[str, Any] | None = None, models: Mapping[str, str] | None = None,
              default_model: str | None = None, prices: Mapping[str, Price] | None = None,
              tracer: Any = None, pool: BackendPool | None = None, name: str | None = None,
              passes: Sequence[Pass] | None = None,
              policies: Sequence[AgentPolicy | str] = (),
              thread_idle_s: float | None = None) -> ServedGraph:
        """``thread_idle_s``: a thread without an invocation for this long loses its run
        and cache (an hour unless told; ``orla_langgraph.idle``)."""
        from orla_langgraph.idle import DEFAULT_THREAD_IDLE_S, IdleThreads
        from orla_langgraph.plan import plan_from_graph
        from orla_langgraph.served import ServedGraph

        graph = _compiled(app)
        plan = plan_from_graph(graph, name=name, models=models, backends=backends,
                               mapping=mapping, default_model=default_model, passes=passes)
        session = ServingSession(plan, pool=pool, models=models, report=Report(prices),
                                 policies=policies)
        idle = IdleThreads(DEFAULT_THREAD_IDLE_S if thread_idle_s is None else thread_idle_s)
        return ServedGraph(graph, session, name=plan.name, tracer=tracer, idle=idle)


def _compiled(app: Any) -> Any:
    if not callable(getattr(app, "get_graph", None)):
        raise OrlaError(f"orla takes a compiled LangGraph graph, not a {type(app).__name__}; "
                        "compile it first: orla.serve(builder.compile()).")
    return app
