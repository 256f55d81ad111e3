"""orla_sdk: the serving layer for LLM agent workflows.

    import orla_sdk as orla

    @orla.stage(model="light")
    def classify(ticket: str) -> Triage: ...

    @orla.workflow
    def support(ticket: str): ...

    plan = orla.compile(support)
"""

from orla_sdk import backends, passes
from orla_sdk.compile import compile, trace
from orla_sdk.errors import OrlaError, PlanValidationError, Problem, RefError, TraceError
from orla_sdk.ir import BackendSpec, Capabilities, MapperSpec, Node, Plan, Target
from orla_sdk.mapping import OneBitStageMapper, StageMapper, ThresholdStageMapper
from orla_sdk.passes import DEFAULT_PASSES
from orla_sdk.runtime import (
    BackendPool,
    OutputError,
    RunError,
    RunResult,
    StageRecord,
    achat,
    agenerate,
    arun,
    chat,
    generate,
    run,
)
from orla_sdk.stage import Stage, priority_by, stage
from orla_sdk.trace import cond, switch
from orla_sdk.workflow import Workflow, workflow

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PASSES", "BackendPool", "BackendSpec", "Capabilities", "MapperSpec", "Node",
    "OneBitStageMapper", "OrlaError", "OutputError", "Plan", "PlanValidationError", "Problem",
    "RefError", "RunError", "RunResult", "Stage", "StageMapper", "StageRecord", "Target",
    "ThresholdStageMapper", "TraceError", "Workflow", "achat", "agenerate", "arun", "backends",
    "chat", "compile", "cond", "generate", "passes", "priority_by", "run", "stage", "switch",
    "trace", "workflow",
]
