"""Tool-result memoization: a pure tool (``@orla.tool(pure=True)``, or with a ``ttl``)
called again with equal arguments, within a scope, gets its earlier result without
running. A tool with effects is never memoized; a call that failed is never kept."""

from __future__ import annotations

from collections import OrderedDict

from orla_sdk.agents.events import AgentEvent
from orla_sdk.agents.policy import AgentPolicy, ToolUse
from orla_sdk.agents.scopes import Scope, checked_scope, scope_key

Entry = tuple[tuple[str, ...], str, str]  # (scope, tool, canonical arguments)


class MemoizeTools(AgentPolicy):
    """``scope``: "run" (the default: a run's agents share their lookups), "agent" (an
    agent's runs share them), "workload" or "tenant". At most ``max_entries`` results are
    kept, the least recently used dropped first. ``hits`` and ``misses`` count lookups of
    pure tools."""

    name = "memo"

    def __init__(self, scope: Scope = "run", *, max_entries: int = 10_000) -> None:
        self.scope = checked_scope(scope)
        self.max_entries = max_entries
        self.results: OrderedDict[Entry, tuple[str, float | None]] = OrderedDict()
        # misses running now: their ttl, and their run (to forget them if cancelled)
        self.waiting: dict[Entry, tuple[float | None, str]] = {}
        self.hits = self.misses = 0
        self.now = 0.0  # the time of the latest event

    def tool_result(self, use: ToolUse) -> str | None:
        if not use.pure or use.effect:
            return None
        entry = (scope_key(use.key, self.scope), use.tool, use.arguments)
        kept = self.results.get(entry)
        if kept is not None and (kept[1] is None or self.now < kept[1]):
            self.results.move_to_end(entry)
            self.hits += 1
            return kept[0]
        self.misses += 1
        self.waiting[entry] = (use.ttl_s, use.key.run)
        return None

    def observe(self, event: AgentEvent) -> None:
        self.now = event.data.get("at", self.now)
        if event.kind == "tool_ended":
            self._keep(event)
        elif event.kind == "turn" and event.data.get("ended"):
            self._forget_run(event.key.run)

    def _keep(self, event: AgentEvent) -> None:
        entry = (scope_key(event.key, self.scope), str(event.data.get("tool")),
                 str(event.data.get("arguments")))
        if entry not in self.waiting:
            return
        ttl = self.waiting.pop(entry)[0]
        if event.data.get("failed"):
            return
        self.results[entry] = (str(event.data.get("result")),
                               None if ttl is None else self.now + ttl)
        self.results.move_to_end(entry)
        while len(self.results) > self.max_entries:
            self.results.popitem(last=False)

    def _forget_run(self, run: str) -> None:
        self.waiting = {e: w for e, w in self.waiting.items() if w[1] != run}
        if self.scope == "run":
            for entry in [e for e in self.results if e[0][-1] == run]:
                del self.results[entry]
