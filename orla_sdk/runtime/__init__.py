"""The runtime: runs compiled plans against real engines.

Besides the user's calls (``run``, ``generate``, ...), this package exports what serving
sessions and adapters build on: the stage context a model call is made in, the recorded
model call, and the structured-output helpers for engines that cannot call tools.
"""

from orla_sdk.agents import CacheChoice, CacheEvent, MemoryPolicy, SmallIncrement
from orla_sdk.runtime.call import call_model
from orla_sdk.runtime.checkpoint import CheckpointStore, SQLiteCheckpoints
from orla_sdk.runtime.context import RunState, StageContext, current_stage
from orla_sdk.runtime.events import RunEvent
from orla_sdk.runtime.executor import aresume, arun, resume, run
from orla_sdk.runtime.gc_tuning import tune_gc_for_serving
from orla_sdk.runtime.generate import achat, agenerate, astream, chat, generate, stream
from orla_sdk.runtime.openai_shim import async_openai_client, openai_client, wrap
from orla_sdk.runtime.pool import BackendPool
from orla_sdk.runtime.records import (
    CacheLogEntry,
    CallRecord,
    RunResult,
    StageRecord,
    failed_cache_action,
)
from orla_sdk.runtime.routing import stage_target
from orla_sdk.runtime.scheduler import ByPriority, Policy, ShortestFirst, Waiting
from orla_sdk.runtime.structured import close_cut_json, emulated_tools_schema, read_reply

__all__ = [
    "BackendPool", "ByPriority", "CacheChoice", "CacheEvent", "CacheLogEntry", "CallRecord",
    "CheckpointStore", "MemoryPolicy", "Policy", "RunEvent", "RunResult", "RunState",
    "SQLiteCheckpoints", "ShortestFirst", "SmallIncrement", "StageContext", "StageRecord",
    "Waiting", "achat", "agenerate", "aresume", "arun", "astream", "async_openai_client",
    "call_model", "chat", "close_cut_json", "current_stage", "emulated_tools_schema",
    "failed_cache_action", "generate", "openai_client", "read_reply", "resume", "run",
    "stage_target", "stream", "tune_gc_for_serving", "wrap",
]
