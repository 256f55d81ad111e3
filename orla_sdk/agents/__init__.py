"""The agent layer: observe, score, predict and act, keyed by agent identity.

Policies plug into one substrate (``AgentLayer``): ``CacheSage`` (learned transitions,
survival-based eviction and prefetch) and its baselines (``LeastRecentlyUsed``,
``StepsToNext``, ``Belady``); the memory policies that keep or drop a stage's context
(``MemoryPolicy``, ``SmallIncrement``); ``MemoizeTools`` (pure tools' results given
again), ``FairShare`` (fair queuing across agents, runs or tenants), ``Budget`` (token,
cost and tool-call caps, allowed tools) and ``PinAcrossTools`` (contexts kept through
tool waits); and any policy ordering the backends' queues.
``docs/agents.md`` describes the layer and how to write a policy; ``trace`` is the
multi-agent trace format and ``replay`` runs a trace on the simulator under chosen
policies.
"""

from orla_sdk.agents.baselines import Belady, LeastRecentlyUsed, StepsToNext
from orla_sdk.agents.budgets import Budget
from orla_sdk.agents.cachesage import CacheSage
from orla_sdk.agents.events import AgentEvent, AgentEventKind
from orla_sdk.agents.fairness import FairShare
from orla_sdk.agents.identity import AgentKey, fingerprint
from orla_sdk.agents.memo import MemoizeTools
from orla_sdk.agents.memory_policy import CacheChoice, CacheEvent, MemoryPolicy, SmallIncrement
from orla_sdk.agents.pinning import PinAcrossTools
from orla_sdk.agents.policy import Admission, AgentLayer, AgentPolicy, Cached, Queued, ToolUse
from orla_sdk.agents.registry import policies_from, policy_by_name
from orla_sdk.agents.scopes import Scope
from orla_sdk.agents.trace import TraceCall, TraceError, read_trace, write_trace
from orla_sdk.agents.transitions import TransitionModel

__all__ = [
    "Admission", "AgentEvent", "AgentEventKind", "AgentKey", "AgentLayer", "AgentPolicy",
    "Belady", "Budget", "CacheChoice", "CacheEvent", "CacheSage", "Cached", "FairShare",
    "LeastRecentlyUsed", "MemoizeTools", "MemoryPolicy", "PinAcrossTools", "Queued", "Scope",
    "SmallIncrement", "StepsToNext", "ToolUse", "TraceCall", "TraceError", "TransitionModel",
    "fingerprint", "policies_from", "policy_by_name", "read_trace", "write_trace",
]
