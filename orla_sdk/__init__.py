"""orla_sdk: the serving layer for LLM agent workflows.

    import orla_sdk as orla

    @orla.stage(model="light")
    def classify(ticket: str) -> Triage: ...

    @orla.workflow
    def support(ticket: str): ...

    plan = orla.compile(support)
"""

from typing import TYPE_CHECKING, Any

from orla_sdk import backends, passes, proxy
from orla_sdk.compile import compile, trace
from orla_sdk.errors import OrlaError, PlanValidationError, Problem, RefError, TraceError
from orla_sdk.integrations.report import Price, Report
from orla_sdk.integrations.serve import serve
from orla_sdk.ir import BackendSpec, Capabilities, MapperSpec, Node, Plan, Scheduling, Target
from orla_sdk.langgraph_plan import plan_from_graph
from orla_sdk.mapping import OneBitStageMapper, StageMapper, ThresholdStageMapper
from orla_sdk.passes import DEFAULT_PASSES
from orla_sdk.render import render  # the function: it shadows the submodule's name here
from orla_sdk.runtime import (
    BackendPool,
    ByPriority,
    CacheChoice,
    CacheEvent,
    MemoryPolicy,
    OutputError,
    Policy,
    RunError,
    RunEvent,
    RunResult,
    ShortestFirst,
    SmallIncrement,
    StageRecord,
    Waiting,
    achat,
    agenerate,
    arun,
    astream,
    async_openai_client,
    chat,
    generate,
    openai_client,
    run,
    stream,
    wrap,
)
from orla_sdk.stage import Stage, priority_by, stage
from orla_sdk.trace import cond, switch
from orla_sdk.workflow import Workflow, workflow

if TYPE_CHECKING:
    from orla_sdk.integrations.autogen import autogen_client

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PASSES", "BackendPool", "BackendSpec", "ByPriority", "CacheChoice", "CacheEvent",
    "Capabilities", "MapperSpec", "MemoryPolicy", "Node", "OneBitStageMapper", "OrlaError",
    "OutputError", "Plan", "PlanValidationError", "Policy", "Problem", "RefError", "RunError",
    "RunEvent", "RunResult", "Scheduling", "ShortestFirst", "SmallIncrement", "Stage",
    "StageMapper", "StageRecord", "Target", "ThresholdStageMapper", "TraceError", "Waiting",
    "Workflow", "achat", "agenerate", "arun", "astream", "backends", "chat", "compile", "cond",
    "generate", "passes", "priority_by", "proxy", "run", "stage", "stream", "switch", "trace",
    "workflow",
]
__all__ += ["async_openai_client", "openai_client", "wrap"]
__all__ += ["plan_from_graph", "render"]
__all__ += ["Price", "Report", "serve"]
__all__ += ["autogen_client"]


def __getattr__(name: str) -> Any:
    # AutoGen is imported on first use: it adds half a second to ``import orla_sdk``
    if name == "autogen_client":
        from orla_sdk.integrations.autogen import autogen_client

        return autogen_client
    raise AttributeError(f"module 'orla_sdk' has no attribute {name!r}")
