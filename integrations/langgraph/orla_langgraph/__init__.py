"""orla-langgraph: orla as the serving layer beneath LangGraph apps.

Installed, it registers with orla, so ``orla.compile(graph)``, ``orla.render(graph, path)``
and ``orla.serve(graph)`` take a compiled LangGraph graph.
"""

from orla_langgraph.adapter import LangGraphAdapter
from orla_langgraph.plan import plan_from_graph
from orla_langgraph.served import Invocation, ServedGraph

__all__ = ["Invocation", "LangGraphAdapter", "ServedGraph", "plan_from_graph"]
