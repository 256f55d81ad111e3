"""Budgets and tool permissions: per run, agent, workload or tenant, a cap on tokens, on
cost and on tool calls, and an allow-list of tools. A model call that would break a cap
is refused (the stage fails with ``Refused``, naming the agent, the rule and the limit);
a refused tool call becomes a message to the model, which may answer without it."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping
from typing import Any

from orla_sdk.agents.events import AgentEvent
from orla_sdk.agents.identity import AgentKey
from orla_sdk.agents.policy import Admission, AgentPolicy
from orla_sdk.agents.scopes import Scope, checked_scope, scope_key
from orla_sdk.errors import OrlaError

PER_MILLION = 1_000_000


class Budget(AgentPolicy):
    """``per``: what one budget covers. ``tokens``: prompt and completion tokens at most;
    ``cost``: dollars at most, at ``price_per_mtok`` dollars a million tokens (one price,
    or one per backend); ``tool_calls``: tool calls at most; ``tools``: the tools that may
    be called at all. ``agents`` and ``tenants``: the agents and the proxy's API tokens
    (by name) it applies to (all, when not given)."""

    name = "budget"

    def __init__(self, per: Scope = "run", *, tokens: int | None = None,
                 cost: float | None = None, price_per_mtok: float | Mapping[str, float] = 0.0,
                 tool_calls: int | None = None, tools: Collection[str] | None = None,
                 agents: Collection[str] | None = None,
                 tenants: Collection[str] | None = None) -> None:
        self.per = checked_scope(per)
        self.tokens, self.cost, self.tool_calls = tokens, cost, tool_calls
        self.price_per_mtok = price_per_mtok
        self.tools = set(tools) if tools is not None else None
        self.agents = set(agents) if agents is not None else None
        self.tenants = set(tenants) if tenants is not None else None
        # tokens served, plus those reserved by calls admitted and not yet finished
        self.used_tokens: Counter[tuple[str, ...]] = Counter()
        self.spent: defaultdict[tuple[str, ...], float] = defaultdict(float)
        self.used_tools: Counter[tuple[str, ...]] = Counter()

    def applies(self, key: AgentKey) -> bool:
        return ((self.agents is None or key.agent in self.agents)
                and (self.tenants is None or key.tenant in self.tenants))

    def admit(self, request: Admission) -> str | None:
        if not self.applies(request.key):
            return None
        scope = scope_key(request.key, self.per)
        if request.kind == "tool":
            return self._tool_refusal(scope, request.tool or "")
        if self.tokens is not None and self.used_tokens[scope] + request.tokens > self.tokens:
            return (f"token budget: it may use up to {request.tokens} tokens, and "
                    f"{self.used_tokens[scope]} of at most {self.tokens} per {self.per} are "
                    "used or held by calls running")
        price = self._price(request.backend)
        if self.cost is not None and self.spent[scope] + request.tokens * price > self.cost:
            return (f"cost budget: it may cost up to ${request.tokens * price:.4f}, and "
                    f"${self.spent[scope]:.4f} of at most ${self.cost:.4f} per {self.per} "
                    "is spent or held by calls running")
        return None

    def _tool_refusal(self, scope: tuple[str, ...], tool: str) -> str | None:
        if self.tools is not None and tool not in self.tools:
            return (f"tool permission: {tool!r} is not among the tools allowed "
                    f"({', '.join(sorted(self.tools)) or 'none'})")
        if self.tool_calls is not None and self.used_tools[scope] >= self.tool_calls:
            return (f"tool-call budget: {self.used_tools[scope]} of at most "
                    f"{self.tool_calls} tool calls per {self.per} are made")
        return None

    def observe(self, event: AgentEvent) -> None:
        if not self.applies(event.key):
            return
        scope, price = scope_key(event.key, self.per), self._price(event.backend)
        reserved = int(event.data.get("admitted_tokens", 0))
        if event.kind == "call_queued":  # reserved while it runs, so that calls at once
            self._use(scope, reserved, price)  # cannot all pass the same remainder
        elif event.kind == "call_finished" and not event.warmup:
            self._use(scope, event.served_tokens - reserved, price)
        elif event.kind == "call_failed":
            self._use(scope, -reserved, price)
        elif event.kind == "tool_started":
            self.used_tools[scope] += 1

    def _use(self, scope: tuple[str, ...], tokens: int, price: float) -> None:
        self.used_tokens[scope] += tokens
        self.spent[scope] += tokens * price

    def _price(self, backend: str | None) -> float:
        """Dollars a token on ``backend``."""
        price = self.price_per_mtok
        if isinstance(price, Mapping):
            price = price.get(backend or "", 0.0)
        return float(price) / PER_MILLION


def budget_from_text(text: str) -> Budget:
    """``per=tenant,tokens=5000,cost=0.5,price_per_mtok=0.2,agents=x|y,tenants=alice``: a
    budget as ``orla serve --budget`` takes it. The proxy's clients run their own tools,
    so tool caps and permissions are not among its fields."""
    fields: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        if not sep:
            raise OrlaError(f"--budget {text!r}: {part!r} is not NAME=VALUE")
        fields[name.strip()] = value.strip()
    unknown = set(fields) - set(_BUDGET_FIELDS)
    if unknown:
        raise OrlaError(f"--budget {text!r}: unknown {', '.join(sorted(unknown))}; the fields "
                        f"are {', '.join(_BUDGET_FIELDS)}")
    try:
        return Budget(checked_scope(fields.get("per", "tenant")), **{
            name: _BUDGET_FIELDS[name](value) for name, value in fields.items()
            if name != "per"})
    except ValueError as exc:
        raise OrlaError(f"--budget {text!r}: {exc}") from exc


def _names(value: str) -> list[str]:
    return [name for name in value.split("|") if name]


_BUDGET_FIELDS: dict[str, Callable[[str], Any]] = {
    "per": str, "tokens": int, "cost": float, "price_per_mtok": float, "agents": _names,
    "tenants": _names}
