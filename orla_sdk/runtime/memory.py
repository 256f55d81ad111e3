"""The memory manager: turns the plan's keep/flush decisions into engine actions.

On llama.cpp a run leases one slot per backend: its requests there are pinned to that
slot, so a preserve span finds its prefix cached. When a stage's decision is "flush" the
slot is erased and given back; at the end of the run every slot it still holds is
erased. Engines without slots get no action; the decision is logged as a soft flush.
Every decision lands in the run's cache log with the cached tokens the engine reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orla_sdk.backends.llamacpp_slots import LlamaCppControl


@dataclass
class SlotTable:
    """The slots of one llama.cpp backend and which run holds each."""

    control: LlamaCppControl
    free: list[int]
    held: dict[str, int] = field(default_factory=dict)


class MemoryManager:
    def __init__(self) -> None:
        self.tables: dict[str, SlotTable] = {}

    def add_llamacpp(self, backend: str, control: LlamaCppControl, slots: int) -> None:
        self.tables[backend] = SlotTable(control, list(range(slots)))

    def slot_for(self, run_id: str, backend: str) -> int | None:
        """The run's slot on this backend, leasing one if free; None when none is free."""
        table = self.tables.get(backend)
        if table is None:
            return None
        if run_id not in table.held and table.free:
            table.held[run_id] = table.free.pop(0)
        return table.held.get(run_id)

    async def after_stage(self, run_id: str, backend: str, decision: str,
                          reason: str) -> str:
        """Carry out a stage's cache decision; returns what was done."""
        table = self.tables.get(backend)
        if decision == "preserve":
            slot = table.held.get(run_id) if table else None
            return f"keep slot {slot}" if slot is not None else "keep (no slot held)"
        if decision == "deferred":
            return "none: decided at the end of the run"
        if table is None:
            return "soft flush: engine has no per-workflow cache control"
        return await self._release(table, run_id)

    async def end_run(self, run_id: str) -> list[dict[str, Any]]:
        """Erase and give back every slot the run still holds."""
        entries = []
        for backend, table in self.tables.items():
            if run_id in table.held:
                action = await self._release(table, run_id)
                entries.append({"node": None, "backend": backend, "decision": "flush",
                                "reason": "end of workflow", "action": action})
        return entries

    async def _release(self, table: SlotTable, run_id: str) -> str:
        slot = table.held.pop(run_id, None)
        if slot is None:
            return "none: no slot held"
        try:
            erased = await table.control.erase(slot)
        finally:
            table.free.append(slot)
        return f"erase slot {slot} ({erased} tokens)"
