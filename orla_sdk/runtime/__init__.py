"""The runtime: runs compiled plans against real engines."""

from orla_sdk.runtime.executor import arun, run
from orla_sdk.runtime.generate import OutputError, achat, agenerate, chat, generate
from orla_sdk.runtime.pool import BackendPool
from orla_sdk.runtime.records import CallRecord, RunError, RunResult, StageRecord

__all__ = ["BackendPool", "CallRecord", "OutputError", "RunError", "RunResult", "StageRecord",
           "achat", "agenerate", "arun", "chat", "generate", "run"]
