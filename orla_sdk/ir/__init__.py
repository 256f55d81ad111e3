"""The plan, orla's one intermediate representation, and the typed notes passes leave on it.

Tracers and importers write a plan, passes annotate it, and readers (the renderer,
snapshots, the runtime) consume it. This package imports nothing of orla above it.
"""

from orla_sdk.ir.notes import (
    NEUTRAL_PRIORITY,
    CacheDecision,
    CacheNote,
    Candidate,
    MappingNote,
    PriorityNote,
    cache_of,
    mapping_of,
    priority_of,
    write,
)
from orla_sdk.ir.plan import (
    PLAN_FORMAT,
    PRIORITY_RANGE,
    RUN_KEYWORDS,
    BackendSpec,
    BranchTest,
    Capabilities,
    Condition,
    Edge,
    Guard,
    MapperSpec,
    Node,
    Param,
    Plan,
    PriorityRule,
    Scheduling,
    StageSpec,
    Target,
    ToolSpec,
    TypeSpec,
    chooser_branches,
    control_parents,
    dependencies,
    iter_refs,
)

__all__ = [
    "NEUTRAL_PRIORITY", "PLAN_FORMAT", "PRIORITY_RANGE", "RUN_KEYWORDS", "BackendSpec",
    "BranchTest", "CacheDecision", "CacheNote", "Candidate", "Capabilities", "Condition", "Edge",
    "Guard", "MapperSpec", "MappingNote", "Node", "Param", "Plan", "PriorityNote", "PriorityRule",
    "Scheduling", "StageSpec", "Target", "ToolSpec", "TypeSpec", "cache_of", "chooser_branches",
    "control_parents", "dependencies", "iter_refs", "mapping_of", "priority_of", "write",
]
