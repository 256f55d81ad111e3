"""orla_sdk: the serving layer for LLM agent workflows.

    import orla_sdk as orla

    @orla.stage(model="light")
    def classify(ticket: str) -> Triage: ...

    @orla.workflow
    def support(ticket: str): ...

    plan = orla.compile(support)

These names are the user's vocabulary; the subpackages (``orla_sdk.ir``,
``orla_sdk.runtime``, ``orla_sdk.serving``, ``orla_sdk.backends``, ``orla_sdk.passes``)
export the rest, for those who extend orla. ``import orla_sdk`` loads no engine, HTTP
server, framework, graphviz or the ``openai`` package: each loads on first use.
"""

from orla_sdk import backends, passes
from orla_sdk.compile import compile, render
from orla_sdk.errors import (
    BackendDown,
    BackendError,
    OrlaError,
    OutputError,
    PlanValidationError,
    RunError,
    TraceError,
)
from orla_sdk.ir import Plan, Scheduling, Target
from orla_sdk.mapping import OneBitStageMapper, StageMapper, ThresholdStageMapper
from orla_sdk.runtime import (
    BackendPool,
    MemoryPolicy,
    Policy,
    RunResult,
    StageRecord,
    achat,
    agenerate,
    aresume,
    arun,
    astream,
    async_openai_client,
    chat,
    generate,
    openai_client,
    resume,
    run,
    stream,
    wrap,
)
from orla_sdk.serving import Price, Report, serve
from orla_sdk.stage import priority_by, stage
from orla_sdk.tools import tool
from orla_sdk.trace import cond, is_none, switch
from orla_sdk.workflow import workflow

__version__ = "0.2.0"

__all__ = [
    "BackendDown", "BackendError", "BackendPool", "MemoryPolicy", "OneBitStageMapper", "OrlaError",
    "OutputError", "Plan", "PlanValidationError", "Policy", "Price", "Report", "RunError",
    "RunResult", "Scheduling", "StageMapper", "StageRecord", "Target",
    "ThresholdStageMapper", "TraceError", "achat", "agenerate", "aresume", "arun",
    "astream", "async_openai_client", "backends", "chat", "compile", "cond", "generate",
    "is_none", "openai_client", "passes", "priority_by", "render", "resume", "run",
    "serve", "stage", "stream", "switch", "tool", "workflow", "wrap",
]
