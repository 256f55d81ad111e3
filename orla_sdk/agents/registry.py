"""Agent policies by name, so that plans, configs and ``orla serve --policy`` stay plain
text: a built-in name, or ``module:Class`` for a policy of one's own."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orla_sdk.agents.baselines import LeastRecentlyUsed
from orla_sdk.agents.cachesage import CacheSage
from orla_sdk.agents.fairness import FairShare
from orla_sdk.agents.memo import MemoizeTools
from orla_sdk.agents.pinning import PinAcrossTools
from orla_sdk.agents.policy import AgentPolicy
from orla_sdk.errors import OrlaError
from orla_sdk.refs import load_ref

BUILT_IN: dict[str, Callable[[], AgentPolicy]] = {
    "cachesage": CacheSage, "lru": LeastRecentlyUsed, "memo": MemoizeTools,
    "fair": FairShare, "pin": PinAcrossTools}
NEEDS_AN_ORACLE = {"kvflow": "StepsToNext", "min": "Belady"}


def policy_by_name(name: str) -> AgentPolicy:
    """A built-in name (``"cachesage"``, ``"lru"``, ``"memo"``, ``"fair"``, ``"pin"``) or
    ``"package.module:Class"`` (built with no arguments)."""
    if name in BUILT_IN:
        return BUILT_IN[name]()
    if name == "budget":
        raise OrlaError("agent policy 'budget' needs its limits; build orla_sdk.agents."
                        "Budget(per=..., tokens=..., tool_calls=..., tools=[...]) in code, or "
                        "give `orla serve --budget ...`")
    if name in NEEDS_AN_ORACLE:
        raise OrlaError(f"agent policy {name!r} needs to be told the future (steps to each "
                        f"agent's next call); build orla_sdk.agents.{NEEDS_AN_ORACLE[name]} "
                        "with that oracle in code, or use it through `orla replay`")
    if ":" not in name:
        raise OrlaError(f"unknown agent policy {name!r}; use one of "
                        f"{', '.join(sorted(BUILT_IN))} or 'module:Class'")
    try:
        cls = load_ref(name)
    except Exception as exc:
        raise OrlaError(f"cannot load agent policy {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, AgentPolicy)):
        raise OrlaError(f"{name!r} is not an AgentPolicy subclass; subclass "
                        "orla_sdk.agents.AgentPolicy")
    return cls()


def policies_from(items: Sequence[str | AgentPolicy]) -> list[AgentPolicy]:
    return [policy_by_name(item) if isinstance(item, str) else item for item in items]
