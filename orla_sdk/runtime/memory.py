"""The memory manager: turns keep/flush decisions into engine actions, per workflow run.

Slot engines (llama.cpp, and the simulator imitating it): a run leases a slot per
backend, and its requests there are pinned to it, so a preserve span finds its prefix
cached. A flush erases the slot and frees it. When every slot is held and another run
needs one, the agent layer picks the slot to lend (least recently used by default;
CacheSage keeps the slots of agents predicted to speak soon): saved to the engine's slot
folder and restored when its holder comes back, or, where the engine cannot save, handed
over as it is (the borrower's prompt reuses the prefix they share, a common system
prompt). A second stage of a run that arrives while the run's slot is busy borrows
another slot for that one call.
Slots are held by a run, or, for calls of a declared agent (a LangGraph node, an AutoGen
agent, ``@stage(agent=...)``, the proxy's ``X-Orla-Agent``), by a context of the run: the
call joins the run's context whose last prompt shares the most with its prompt, at least
half of the shorter of the two (as llama.cpp picks a slot by prompt similarity), else the
agent's own context. Agents with their own system prompts then keep their own
slots instead of evicting each other's, while nodes that continue one conversation share
its slot. Between calls, the saved context of the agent the layer predicts
next is restored into an idle slot (prefetch). When a run ends, each declared agent's
context is kept in one saved file per agent (a template, saved anew every 16th run), and
that agent's first context in a later run starts from it, so what their prompts share (a
system prompt) is cached. The ending context's slot is left holding the template (saved
from it, or restored over it), and a new context of that agent takes such a slot first:
its first call then waits for no restore.
A run that waits for a person (a LangGraph interrupt) is suspended: its slots are saved
and freed at once, and restored when it calls again.

Shared-cache engines (vLLM, SGLang): the only flush is a global reset, done only when no
other run holds a kept context or has a request in flight there; otherwise the flush is
recorded as soft. Under memory pressure (KV usage from the engine's metrics at or above
``pressure``) the kept contexts of idle runs are dropped the same way.

Every decision and action lands in the run's cache log. A cache action that fails (an
erase, save, restore, reset, or deleting a saved file) is logged there and as a warning of
the ``orla_sdk.memory`` logger, and never fails the stage or run it followed: the end of a
run tries every backend and every slot whatever fails before. Slot saving is turned off
for a backend only after ``SAVE_ATTEMPTS`` saves fail in a row. A saved slot is deleted
(``forget``, where the engine can) once nothing will restore it: when its holder comes
back, or its run ends; agents' templates stay.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from orla_sdk.agents import (
    AgentEvent,
    AgentEventKind,
    AgentKey,
    AgentLayer,
    CacheChoice,
    Cached,
    CacheEvent,
    LeastRecentlyUsed,
    SmallIncrement,
)
from orla_sdk.agents.memory_policy import decide
from orla_sdk.ir import Node, cache_of
from orla_sdk.runtime.records import CacheLogEntry, StageRecord


class SlotControl(Protocol):
    async def erase(self, slot: int) -> int: ...


class SavingSlotControl(SlotControl, Protocol):
    async def save(self, slot: int, filename: str) -> int: ...

    async def restore(self, slot: int, filename: str) -> int: ...


class ForgettingSlotControl(SavingSlotControl, Protocol):
    async def forget(self, filename: str) -> bool:
        """Delete a saved slot that nothing will restore again; whether one was deleted."""
        ...


class ResetControl(Protocol):
    async def reset(self) -> int | None: ...

    async def usage(self) -> float | None: ...


Holder = tuple[str, str]  # (run, a context of the run, or "": the run's own slot)
SIMILAR = 0.5  # share of the shorter prompt two prompts must have in common to be one context
TEMPLATE_EVERY = 16  # an agent's template is saved anew at the end of every 16th of its runs
SAVE_ATTEMPTS = 3  # saves that fail in a row before a backend's slot saving is turned off

log = logging.getLogger("orla_sdk.memory")
_NO_SLOT: AbstractAsyncContextManager[int | None] = nullcontext(None)  # reusable: it holds nothing


@dataclass
class SlotTable:
    """The slots of one backend: which holder (a run, or an agent of a run) holds each,
    and which are busy."""

    name: str
    control: SlotControl
    free: list[int]
    held: dict[Holder, int] = field(default_factory=dict)
    saved: dict[Holder, str] = field(default_factory=dict)  # holder -> file of its lent slot
    busy: Counter[int] = field(default_factory=Counter)
    last_used: dict[Holder, int] = field(default_factory=dict)  # in slot events
    keys: dict[Holder, AgentKey] = field(default_factory=dict)  # whose context it is
    prompts: dict[Holder, str] = field(default_factory=dict)  # a context's last prompt
    # (workload, agent) -> the saved file of that agent's context in a run that ended
    templates: dict[tuple[str, str], str] = field(default_factory=dict)
    ended: Counter[tuple[str, str]] = field(default_factory=Counter)  # runs, by agent
    # free slot -> the agent whose template it holds (left there when a run ended)
    primed: dict[int, tuple[str, str]] = field(default_factory=dict)
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)  # of templates, by agent
    events: int = 0
    save_failures: int = 0  # saves that failed in a row; SAVE_ATTEMPTS of them turn saving off

    @property
    def can_save(self) -> bool:
        return self.save_failures < SAVE_ATTEMPTS

    def idle_holder(self, layer: AgentLayer) -> Holder | None:
        """The holder of an idle slot that the agent layer gives up first."""
        idle = [holder for holder, slot in self.held.items() if not self.busy[slot]]
        if not idle:
            return None
        candidates = [Cached(self.keys.get(holder), self.events - self.last_used.get(holder, 0),
                             ref=holder) for holder in idle]
        chosen = layer.victim(candidates).ref
        assert isinstance(chosen, tuple)
        return chosen

    def take_free(self, agent: tuple[str, str] | None = None) -> tuple[int, bool]:
        """A free slot, and whether it holds ``agent``'s template: one that does, else one
        holding no template, else the one free longest."""
        slot = next((s for s in self.free if self.primed.get(s) == agent), None) if agent else None
        if slot is None:
            slot = next((s for s in self.free if s not in self.primed), self.free[0])
        self.free.remove(slot)
        held = self.primed.pop(slot, None)  # whatever it held, it is in use from now on
        return slot, agent is not None and held == agent

    def of_run(self, run_id: str) -> list[Holder]:
        return [h for h in {*self.held, *self.saved, *self.prompts} if h[0] == run_id]

    def context_for(self, run_id: str, agent: str, prompt: str) -> Holder:
        """The run's context that ``prompt`` continues, else ``agent``'s own."""
        mine = [(similarity(last, prompt), holder) for holder, last in self.prompts.items()
                if holder[0] == run_id]
        best = max(mine, default=None)
        return best[1] if best is not None and best[0] >= SIMILAR else (run_id, agent)


@dataclass
class SharedCache:
    """A backend with one prefix cache for everyone: who keeps a context, who is busy."""

    control: ResetControl
    keeping: set[str] = field(default_factory=set)
    in_flight: Counter[str] = field(default_factory=Counter)
    checked_at: float = 0.0


class _Pin:
    """One request's slot, held while it runs (``MemoryManager.pin``; each pin is entered
    once): a class, not an ``asynccontextmanager``, whose generator costs microseconds on
    every model call."""

    __slots__ = ("agent", "borrowed", "holder", "manager", "prompt", "run_id", "shared",
                 "slot", "table")

    def __init__(self, manager: MemoryManager, table: SlotTable | None,
                 shared: SharedCache | None, run_id: str, agent: AgentKey | None,
                 prompt: str | None) -> None:
        self.manager, self.table, self.shared = manager, table, shared
        self.run_id, self.agent, self.prompt = run_id, agent, prompt
        self.holder: Holder = (run_id, "")
        self.slot: int | None = None
        self.borrowed = False  # lent for this one call: free again after it

    async def __aenter__(self) -> int | None:
        table = self.table
        if table is not None:
            if self.prompt is not None:
                self.holder = table.context_for(
                    self.run_id, self.agent.agent if self.agent else "agent", self.prompt)
                table.prompts[self.holder] = self.prompt
            self.slot = await self.manager._slot_for(table, self.holder, self.agent)
            if self.slot is not None:
                self.borrowed = table.held.get(self.holder) != self.slot
                table.busy[self.slot] += 1
                table.events += 1
        if self.shared is not None:
            self.shared.in_flight[self.run_id] += 1
        return self.slot

    async def __aexit__(self, *exc: object) -> None:
        table, slot, shared = self.table, self.slot, self.shared
        if table is not None and slot is not None:
            table.busy[slot] -= 1
            table.last_used[self.holder] = table.events
            if self.borrowed:  # holding no one's context
                table.free.append(slot)
        elif table is not None:  # the engine ran it in a slot of its choosing: whichever
            table.primed.clear()  # held a template may not any more
        if shared is not None:
            shared.in_flight[self.run_id] -= 1
            if not shared.in_flight[self.run_id]:
                del shared.in_flight[self.run_id]


class MemoryManager:
    def __init__(self, *, pressure: float = 0.9, pressure_check_s: float = 1.0,
                 agents: AgentLayer | None = None) -> None:
        self.agents = agents if agents is not None else AgentLayer([LeastRecentlyUsed(),
                                                                    SmallIncrement()])
        self.pressure = pressure
        self.pressure_check_s = pressure_check_s
        self.tables: dict[str, SlotTable] = {}
        self.shared: dict[str, SharedCache] = {}
        self.kept: dict[str, set[str]] = {}  # run -> the backends where it keeps a context
        self._logs: dict[str, list[CacheLogEntry]] = {}

    def add_slots(self, backend: str, control: SlotControl, slots: int) -> None:
        self.tables[backend] = SlotTable(backend, control, list(range(slots)))

    def add_shared(self, backend: str, control: ResetControl) -> None:
        self.shared[backend] = SharedCache(control)

    def take_log(self, run_id: str) -> list[CacheLogEntry]:
        """What the manager did to this run's cache outside its stages (lent, restored)."""
        return self._logs.pop(run_id, [])

    # ---- requests ---------------------------------------------------------------------
    def pin(self, run_id: str, backend: str, agent: AgentKey | None = None, *,
            prompt: str | None = None) -> AbstractAsyncContextManager[int | None]:
        """The slot one request of ``run_id`` (made by ``agent``) is pinned to (None: no
        slots here): the run's, or given the request's ``prompt`` text, the slot of the
        run's context it continues. Call it while holding a queue turn, so that a slot
        that is not busy exists."""
        table, shared = self.tables.get(backend), self.shared.get(backend)
        if table is None and shared is None:
            return _NO_SLOT  # nothing to pin or count
        return _Pin(self, table, shared, run_id, agent, prompt)

    async def _slot_for(self, table: SlotTable, holder: Holder,
                        agent: AgentKey | None) -> int | None:
        if agent is not None:
            table.keys[holder] = AgentKey(agent.workload, agent.agent, agent.run)
        held = table.held.get(holder)
        if held is not None and not table.busy[held]:
            return held
        spare = await self._spare_slot(table, holder)
        if spare is None:
            return None
        slot, has_template = spare
        if held is not None:  # its own slot is busy: this one is borrowed for one call
            return slot
        table.held[holder] = slot
        if holder in table.saved:
            await self._restore(table, holder, slot, table.saved.pop(holder),
                                "the holder came back to its saved slot", lent=True)
        elif holder[1]:
            await self._start_from_template(table, holder, slot, has_template)
        return slot

    async def _start_from_template(self, table: SlotTable, holder: Holder, slot: int,
                                   has_template: bool) -> None:
        """A new context of a declared agent starts from that agent's context in a run that
        ended, where one was kept: what they share (its system prompt, mostly) is cached.
        A slot that holds the template already (``has_template``) needs no restore."""
        key = table.keys.get(holder)
        filename = table.templates.get((key.workload, key.agent)) if key else None
        if key is None or filename is None:
            return
        why = f"a new context of {key.agent} starts from its last run's"
        if has_template:
            self._log(holder[0], "restore", why, f"none: slot {slot} holds {key.agent}'s "
                      f"template already ({filename})", table.name)
        else:
            await self._restore(table, holder, slot, filename, why, lent=False)

    async def _spare_slot(self, table: SlotTable,
                          for_holder: Holder) -> tuple[int, bool] | None:
        """A free slot, or one the agent layer takes from an idle holder, and whether it
        holds the template of ``for_holder``'s agent; None if every slot is busy."""
        if table.free:
            key = table.keys.get(for_holder)
            return table.take_free((key.workload, key.agent) if key else None)
        victim = table.idle_holder(self.agents)
        if victim is None:
            return None
        slot = table.held.pop(victim)
        action = await self._vacate(table, victim, slot)
        self._log(victim[0], "lend", f"{_name(for_holder)} needed a slot and none was free",
                  action, table.name)
        return slot, False

    async def _vacate(self, table: SlotTable, holder: Holder, slot: int) -> str:
        """Free the slot of idle ``holder`` for another. Its context is saved where the
        engine can save, and restored when the holder comes back; elsewhere the slot is
        handed over as it is, not erased: the next prompt reuses whatever prefix it shares."""
        if not hasattr(table.control, "save"):
            return f"hand over slot {slot} unsaved (this engine cannot save slots)"
        if not table.can_save:
            return (f"hand over slot {slot} unsaved (slot saving is off after "
                    f"{SAVE_ATTEMPTS} failed saves in a row)")
        filename = _slot_file(holder)
        saved, failure = await self._save(table, slot, filename)
        if saved is None:
            return f"hand over slot {slot} unsaved ({failure})"
        table.saved[holder] = filename
        self._observe("slot_saved", table, holder, slot=slot, tokens=saved)
        return f"save slot {slot} to {filename} ({saved} tokens)"

    async def _save(self, table: SlotTable, slot: int, filename: str) -> tuple[int | None, str]:
        """Save ``slot`` to ``filename``: (tokens saved, "") or (None, what failed). Saving
        is turned off for the backend after ``SAVE_ATTEMPTS`` failures in a row."""
        control = table.control
        assert hasattr(control, "save")
        try:
            saved: int = await control.save(slot, filename)
        except Exception as exc:
            table.save_failures += 1
            return None, self._save_failed(table, slot, filename, exc)
        table.save_failures = 0
        return saved, ""

    def _save_failed(self, table: SlotTable, slot: int, filename: str, exc: Exception) -> str:
        what = _failed(table.name, f"save slot {slot} to {filename}", exc)
        if table.can_save:
            return f"{what}; {table.save_failures} of {SAVE_ATTEMPTS} failures in a row"
        log.warning("backend %r: slot saving is off after %d failed saves in a row; lent slots "
                    "are handed over unsaved from now on. Check that the llama.cpp server has "
                    "a writable slot folder (--slot-save-path; orla's embedded engine makes "
                    "one).", table.name, SAVE_ATTEMPTS)
        return f"{what}; slot saving is now off for {table.name}"

    async def _restore(self, table: SlotTable, holder: Holder, slot: int, filename: str,
                       why: str, *, lent: bool) -> None:
        """Restore ``filename`` into ``slot`` for ``holder``; a ``lent`` slot's file is
        deleted afterwards (nothing restores it again), an agent's template stays."""
        restored, action = await self._restore_slot(table, holder, slot, filename)
        if restored is None:
            action += "; the context is recomputed"
        if lent:
            action += await self._forget(table, filename)
        self._log(holder[0], "restore", why, action, table.name)

    async def _restore_slot(self, table: SlotTable, holder: Holder, slot: int,
                            filename: str) -> tuple[int | None, str]:
        """Restore ``filename`` into ``slot``: (tokens restored, what was done), or (None,
        what failed, logged as a warning)."""
        control = table.control
        assert hasattr(control, "restore")
        try:
            restored: int = await control.restore(slot, filename)
        except Exception as exc:
            return None, _failed(table.name, f"restore slot {slot} from {filename}", exc)
        self._observe("slot_restored", table, holder, slot=slot, tokens=restored)
        return restored, f"restore slot {slot} from {filename} ({restored} tokens)"

    async def _forget(self, table: SlotTable, filename: str) -> str:
        """Delete the saved slot ``filename`` where the engine can; returns what to add to
        the cache action ("" unless the deletion failed)."""
        control = table.control
        if not hasattr(control, "forget"):
            return ""
        try:
            await control.forget(filename)
        except Exception as exc:
            return "; " + _failed(table.name, f"delete the saved slot {filename}", exc)
        return ""

    async def prefetch(self, backend: str, key: AgentKey) -> None:
        """After ``key``'s call: restore the saved contexts of the agents the layer
        predicts next in the run into slots that are free, so that their calls find them."""
        table = self.tables.get(backend)
        if table is None or not table.free:
            return
        for agent in self.agents.prefetch(key):
            holder = next((h for h, k in table.keys.items()
                           if h[0] == key.run and k.agent == agent), None)
            if holder in table.saved and holder not in table.held and table.free:
                slot, _ = table.take_free()
                table.held[holder] = slot
                table.last_used[holder] = table.events
                await self._restore(table, holder, slot, table.saved.pop(holder),
                                    f"prefetch: {agent} predicted next", lent=True)

    def _observe(self, kind: AgentEventKind, table: SlotTable, holder: Holder,
                 **data: object) -> None:
        if not self.agents.observing:
            return
        key = table.keys.get(holder) or AgentKey("", holder[1], holder[0])
        self.agents.observe(AgentEvent(kind, key, table.name, dict(data)))

    def controls(self, backend: str) -> bool:
        """Whether orla controls ``backend``'s cache: its slots, or its shared prefix cache."""
        return backend in self.tables or backend in self.shared

    def keeps(self, run_id: str, backend: str) -> bool:
        """Whether the run kept a context on ``backend`` after an earlier stage."""
        return backend in self.kept.get(run_id, ())

    def _unkeep(self, run_id: str, backend: str) -> None:
        """The run keeps no context on ``backend`` any more."""
        backends = self.kept.get(run_id)
        if backends is not None:
            backends.discard(backend)
            if not backends:
                del self.kept[run_id]

    # ---- decisions ----------------------------------------------------------------------
    async def after_stage(self, event: CacheEvent) -> tuple[CacheChoice, str]:
        """Decide a finished stage's cache and carry it out; returns the choice and what
        was done."""
        choice = decide(event, self.agents)
        if choice.decision == "preserve":
            self.kept.setdefault(event.run_id, set()).add(event.backend)
            return choice, await self._keep(event)
        if choice.decision == "deferred":
            return choice, "none: decided at the end of the run"
        self._unkeep(event.run_id, event.backend)
        return choice, await self._flush(event.run_id, event.backend, event.slot)

    async def stage_done(self, run_id: str, node: Node, record: StageRecord, *,
                         hinted: bool) -> CacheLogEntry | None:
        """Carry out the plan's cache decision for a finished stage (``node``, its calls in
        ``record``); returns the cache-log entry, or None where there was nothing to decide
        (no decision in the plan, or no call made)."""
        cache, calls = cache_of(node), record.calls
        if cache is None or not calls:
            return None
        first, last = calls[0], calls[-1]
        backend = last.backend
        event = CacheEvent(
            run_id=run_id, node=node.id, stage=record.stage, backend=backend,
            decision=cache.decision, reason=cache.reason, hinted=hinted,
            prompt_tokens=first.prompt_tokens, cached_tokens=first.cached_tokens,
            kept_before=self.keeps(run_id, backend), slot=last.slot)
        choice, record.cache_action = await self.after_stage(event)
        return {"node": node.id, "item": record.item, "backend": backend,
                "decision": choice.decision, "reason": choice.reason,
                "action": record.cache_action, "cached_tokens": record.cached_tokens}

    async def _keep(self, event: CacheEvent) -> str:
        table, shared = self.tables.get(event.backend), self.shared.get(event.backend)
        if table is not None:
            slot = table.held.get(_holder_on(table, event.run_id, event.slot))
            if slot is None:
                return "keep (no slot held)"
            if event.slot is not None and event.slot != slot:
                return (f"keep slot {slot}; this stage ran on borrowed slot {event.slot}, "
                        "whose context is not kept")
            return f"keep slot {slot}"
        if shared is not None:
            shared.keeping.add(event.run_id)
            return await self._relieve_pressure(event.backend, shared) or "keep"
        return "keep"

    async def _flush(self, run_id: str, backend: str, slot: int | None = None) -> str:
        table, shared = self.tables.get(backend), self.shared.get(backend)
        if table is not None:
            return await self._release(table, _holder_on(table, run_id, slot))
        if shared is not None:
            shared.keeping.discard(run_id)
            if _any_other(shared.keeping, run_id) or _any_other(shared.in_flight, run_id):
                return "soft flush: other runs would lose cached work"
            try:
                await shared.control.reset()
            except Exception as exc:
                return _failed(backend, "reset the engine's prefix cache", exc)
            return "reset the engine's prefix cache"
        return "soft flush: this engine has no per-workflow cache control"

    async def _relieve_pressure(self, backend: str, shared: SharedCache) -> str | None:
        """Under memory pressure, drop the kept contexts if every run keeping one is idle."""
        now = time.monotonic()
        if now - shared.checked_at < self.pressure_check_s:
            return None
        shared.checked_at = now
        try:
            usage = await shared.control.usage()
        except Exception as exc:
            _failed(backend, "read the engine's KV usage", exc)
            return None
        if usage is not None:
            self.agents.observe(AgentEvent("kv_usage", AgentKey("", ""), backend,
                                           {"usage": usage}))
        if usage is None or usage < self.pressure:
            return None
        if shared.in_flight:
            return f"keep (KV usage {usage:.0%}, but runs have requests in flight)"
        try:
            await shared.control.reset()
        except Exception as exc:
            return "keep (" + _failed(backend, f"reset at KV usage {usage:.0%}", exc) + ")"
        for run in shared.keeping:
            self._unkeep(run, backend)
            self._log(run, "flush", f"memory pressure: KV usage {usage:.0%}", "reset the "
                      "engine's prefix cache", backend)
        shared.keeping.clear()
        return f"reset the engine's prefix cache (KV usage {usage:.0%})"

    # ---- a paused run ------------------------------------------------------------------
    async def suspend(self, run_id: str) -> list[CacheLogEntry]:
        """The run waits for a person: each idle slot it holds is saved (where the engine
        can save) and freed, and its next call restores it; a context it keeps on a shared
        cache is given up."""
        entries = []
        for backend, table in self.tables.items():
            for holder in table.of_run(run_id):
                slot = table.held.get(holder)
                if slot is None or table.busy[slot]:
                    continue
                del table.held[holder]
                try:
                    action = await self._vacate(table, holder, slot)
                finally:
                    table.free.append(slot)
                entries.append(_entry(backend, "suspend", "the run waits for input", action))
        for backend, shared in self.shared.items():
            if run_id in shared.keeping:
                self._unkeep(run_id, backend)
                entries.append(_entry(backend, "suspend", "the run waits for input",
                                      await self._flush(run_id, backend)))
        return entries

    # ---- the end of a run ---------------------------------------------------------------
    async def end_run(self, run_id: str) -> list[CacheLogEntry]:
        """Drop everything the run still holds: slots, saved slots, kept contexts. Every
        backend and every slot is tried, whatever fails: a failed action is an entry (and
        a warning), never an exception."""
        entries: list[CacheLogEntry] = []
        for table in self.tables.values():
            for holder in table.of_run(run_id):
                try:
                    entries += await self._end_context(table, holder)
                except Exception as exc:  # not a cache action: the agent layer, a bug
                    entries.append(_entry(table.name, "flush", "end of workflow", _failed(
                        table.name, f"drop {_name(holder)}", exc)))
        for backend, shared in self.shared.items():
            if run_id in shared.keeping:
                entries.append(_entry(backend, "flush", "end of workflow",
                                      await self._flush(run_id, backend)))
            shared.in_flight.pop(run_id, None)
        self.kept.pop(run_id, None)
        return entries

    async def _end_context(self, table: SlotTable, holder: Holder) -> list[CacheLogEntry]:
        """Drop one context of an ending run: its saved slot (deleted, unless it becomes its
        agent's template) and its slot (left holding its agent's template, else erased)."""
        table.last_used.pop(holder, None)
        key = table.keys.pop(holder, None)
        table.prompts.pop(holder, None)
        kept = (await self._keep_template(table, holder, key)
                if holder[1] and key is not None else "")
        entries = []
        saved = table.saved.pop(holder, None)
        if saved is not None:
            if not kept:
                kept = "drop the saved slot" + await self._forget(table, saved)
            entries.append(_entry(table.name, "flush", "end of workflow", kept))
        elif kept:
            entries.append(_entry(table.name, "keep", "end of workflow", kept))
        if holder in table.held:  # not where the slot was just saved as the template and left
            left = await self._leave_template(table, holder, key) if holder[1] and key else ""
            entries.append(_entry(table.name, "flush", "end of workflow",
                                  left or await self._release(table, holder)))
        return entries

    async def _leave_template(self, table: SlotTable, holder: Holder, key: AgentKey) -> str:
        """Drop an ending context by restoring its agent's template over it: the slot is
        free, and the agent's next context that takes it has nothing to restore. Returns
        what was done ("": nothing, where there is no template or no restore)."""
        agent = (key.workload, key.agent)
        filename = table.templates.get(agent)
        slot = table.held[holder]
        if filename is None or table.busy[slot] or not hasattr(table.control, "restore"):
            return ""
        del table.held[holder]
        changes = table.changes[agent]
        restored, action = await self._restore_slot(table, holder, slot, filename)
        if restored is None:
            return f"{action}; {await self._erase(table, holder, slot)}"
        if table.changes[agent] != changes:  # saved anew meanwhile: which one is there?
            table.free.append(slot)
            return (f"restore {key.agent}'s template into slot {slot} ({restored} tokens), "
                    "free; the template changed meanwhile")
        _leave_primed(table, slot, agent)
        return (f"restore {key.agent}'s template into slot {slot} ({restored} tokens) and "
                "leave it there")

    async def _keep_template(self, table: SlotTable, holder: Holder, key: AgentKey) -> str:
        """Keep an ending context of a declared agent as where that agent's next contexts
        start: its saved file, or its slot saved now (one file per agent, overwritten;
        saved for the agent's first run and every ``TEMPLATE_EVERY``-th after, as what
        runs share, a system prompt, seldom changes). Returns what was done ("": nothing)."""
        agent = (key.workload, key.agent)
        table.ended[agent] += 1
        if holder in table.saved:
            return (f"keep the saved slot as {key.agent}'s template"
                    + await self._set_template(table, agent, table.saved[holder]))
        slot = table.held.get(holder)
        due = agent not in table.templates or table.ended[agent] % TEMPLATE_EVERY == 1
        if slot is None or not due or not table.can_save or not hasattr(table.control, "save"):
            return ""
        filename = _slot_file((f"template-{key.workload}", key.agent))
        changes = table.changes[agent]
        saved, failure = await self._save(table, slot, filename)
        if saved is None:  # the agent's next contexts start from its last template, if any
            return f"no new template for {key.agent} ({failure})"
        forgotten = await self._set_template(table, agent, filename)
        # the slot holds just the template, unless in use, or the file was saved anew since
        left = (table.held.get(holder) == slot and not table.busy[slot]
                and table.changes[agent] == changes + 1)
        if left:
            del table.held[holder]
            _leave_primed(table, slot, agent)
        return (f"save slot {slot} as {key.agent}'s template ({saved} tokens)"
                + (" and leave it there" if left else "") + forgotten)

    async def _set_template(self, table: SlotTable, agent: tuple[str, str],
                            filename: str) -> str:
        """Make ``filename`` the agent's template; the file it replaces is deleted, and
        slots left holding that agent's earlier template no longer count as holding it."""
        old, table.templates[agent] = table.templates.get(agent), filename
        table.changes[agent] += 1
        for slot in [slot for slot, primed in table.primed.items() if primed == agent]:
            del table.primed[slot]
        return await self._forget(table, old) if old not in (None, filename) else ""

    async def _release(self, table: SlotTable, holder: Holder) -> str:
        slot = table.held.pop(holder, None)
        if slot is None:
            return "none: no slot held"
        return await self._erase(table, holder, slot)

    async def _erase(self, table: SlotTable, holder: Holder, slot: int) -> str:
        """Erase and free ``slot``, which ``holder`` held."""
        try:
            erased = await table.control.erase(slot)
        except Exception as exc:
            return (_failed(table.name, f"erase slot {slot}", exc)
                    + "; the slot is free again and its next prompt may reuse what it holds")
        finally:
            table.free.append(slot)
        self._observe("slot_erased", table, holder, slot=slot, tokens=erased)
        return f"erase slot {slot} ({erased} tokens)"

    def _log(self, run_id: str, decision: str, reason: str, action: str,
             backend: str | None = None) -> None:
        self._logs.setdefault(run_id, []).append(_entry(backend, decision, reason, action))


def _slot_file(holder: Holder) -> str:
    """A file name for the holder's saved slot that llama.cpp accepts (letters, digits,
    dot, dash, underscore), unique per holder even where its names had other characters."""
    run_id, agent = holder
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{run_id}-{agent}" if agent else run_id)[:64]
    digest = hashlib.sha1(f"{run_id}\x00{agent}".encode() if agent else run_id.encode())
    return f"orla-{safe}-{digest.hexdigest()[:8]}-slot.bin"


def _leave_primed(table: SlotTable, slot: int, agent: tuple[str, str]) -> None:
    """Free ``slot``, which holds ``agent``'s template."""
    table.free.append(slot)
    table.primed[slot] = agent


def _failed(backend: str, what: str, exc: Exception) -> str:
    """Log a cache action that failed as a warning; returns its cache-log action."""
    action = f"{what} failed ({type(exc).__name__}: {exc})"
    log.warning("cache action on backend %r: %s; the run goes on without it", backend, action)
    return action


def _name(holder: Holder) -> str:
    run_id, context = holder
    return f"context {context} of run {run_id}" if context else f"run {run_id}"


def similarity(a: str, b: str) -> float:
    """The share of the shorter text that begins both."""
    shared = len(os.path.commonprefix([a, b]))  # noqa: RUF071 (characters are what count)
    return shared / max(min(len(a), len(b)), 1)


def _holder_on(table: SlotTable, run_id: str, slot: int | None) -> Holder:
    """The holder of ``run_id`` whose slot is ``slot``; the run's own where none is."""
    for holder, held in table.held.items():
        if held == slot and holder[0] == run_id:
            return holder
    return (run_id, "")


def _any_other(runs: Iterable[str], run_id: str) -> bool:
    """Whether ``runs`` holds a run other than ``run_id`` (without copying it)."""
    return any(run != run_id for run in itertools.islice(runs, 2))


def _entry(backend: str | None, decision: str, reason: str, action: str) -> CacheLogEntry:
    return {"node": None, "backend": backend, "decision": decision, "reason": reason,
            "action": action}
