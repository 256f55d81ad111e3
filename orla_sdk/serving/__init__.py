"""Serving: orla's runtime beneath apps whose control flow someone else owns.

``serve(app)`` finds the adapter for an app object (a LangGraph graph, an AutoGen team)
and returns it served; ``ServingSession`` is the runtime one served app uses, ``Report``
what it reports per stage, thread and agent; the OpenAI-compatible proxy (``orla serve``)
is a serving session behind HTTP. Adapters build on the names exported here.
"""

from orla_sdk.serving.openai_routing import Resolver, route_openai_calls
from orla_sdk.serving.report import Labels, Price, Report
from orla_sdk.serving.serve import serve
from orla_sdk.serving.session import Outcome, ServingSession

__all__ = ["Labels", "Outcome", "Price", "Report", "Resolver", "ServingSession",
           "route_openai_calls", "serve"]
