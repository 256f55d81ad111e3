"""The groups of calls a policy may count or share by: one run, one agent (across its
runs), one workload, or one tenant (an API token of the proxy)."""

from __future__ import annotations

from typing import Literal

from orla_sdk.agents.identity import AgentKey
from orla_sdk.errors import OrlaError

Scope = Literal["run", "agent", "workload", "tenant"]
SCOPES: tuple[Scope, ...] = ("run", "agent", "workload", "tenant")


def scope_key(key: AgentKey, scope: Scope) -> tuple[str, ...]:
    """What ``key``'s call is counted under, within ``scope``."""
    if scope == "run":
        return (key.tenant, key.workload, key.run)
    if scope == "agent":
        return (key.tenant, key.workload, key.agent)
    if scope == "workload":
        return (key.tenant, key.workload)
    return (key.tenant,)


def checked_scope(scope: str) -> Scope:
    for known in SCOPES:
        if scope == known:
            return known
    raise OrlaError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
