"""The runtime: runs compiled plans against real engines."""

from orla_sdk.runtime.cache_policy import CacheChoice, CacheEvent, MemoryPolicy, SmallIncrement
from orla_sdk.runtime.events import RunEvent
from orla_sdk.runtime.executor import arun, run
from orla_sdk.runtime.generate import (
    OutputError,
    achat,
    agenerate,
    astream,
    chat,
    generate,
    stream,
)
from orla_sdk.runtime.openai_shim import async_openai_client, openai_client, wrap
from orla_sdk.runtime.pool import BackendPool
from orla_sdk.runtime.records import CallRecord, RunError, RunResult, StageRecord
from orla_sdk.runtime.scheduler import ByPriority, Policy, ShortestFirst, Waiting

__all__ = ["BackendPool", "ByPriority", "CacheChoice", "CacheEvent", "CallRecord",
           "MemoryPolicy", "OutputError", "Policy", "RunError", "RunEvent", "RunResult",
           "ShortestFirst", "SmallIncrement", "StageRecord", "Waiting", "achat", "agenerate",
           "arun", "astream", "chat", "generate", "run", "stream"]
__all__ += ["async_openai_client", "openai_client", "wrap"]
