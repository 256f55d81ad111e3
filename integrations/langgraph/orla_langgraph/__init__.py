"""orla-langgraph: orla as the serving layer beneath LangGraph apps.

Installed, it registers with orla, so ``orla.compile(graph)``, ``orla.render(graph, path)``
and ``orla.serve(graph)`` take a compiled LangGraph graph.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orla_langgraph.adapter import LangGraphAdapter
    from orla_langgraph.plan import plan_from_graph
    from orla_langgraph.served import Invocation, ServedGraph

# orla loads every installed adapter to ask which takes an app object: LangGraph itself
# is imported only once one of these names is used
_HOMES = {"LangGraphAdapter": "adapter", "plan_from_graph": "plan", "Invocation": "served",
          "ServedGraph": "served"}

__all__ = ["Invocation", "LangGraphAdapter", "ServedGraph", "plan_from_graph"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'orla_langgraph' has no attribute {name!r}")
    return getattr(importlib.import_module(f"orla_langgraph.{_HOMES[name]}"), name)
