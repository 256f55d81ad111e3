"""The memory manager: slots lent and restored on the real engine, global resets guarded by
other runs, memory pressure, memory policies; plus streaming, run events and an engine
restarted in the middle of a run."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import orla_sdk as orla
from orla_sdk.agents import AgentLayer, CacheEvent, SmallIncrement
from orla_sdk.agents.memory_policy import decide
from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.engine import EngineConfig, LocalEngine, free_port
from orla_sdk.backends.llamacpp_slots import LlamaCppControl
from orla_sdk.backends.openai_client import OpenAICompatibleBackend
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.runtime.memory import MemoryManager

MODEL = orla.backends.DEFAULT_LOCAL_MODEL
CONTEXT = " ".join(f"Record {i}: crate {i} left dock {i % 7} on time." for i in range(30))


def event(decision: str = "preserve", *, prompt: int = 1000, cached: int = 900,
          kept: bool = True, hinted: bool = False, stage: str = "s") -> CacheEvent:
    return CacheEvent(run_id="r", node=stage, stage=stage, backend="b", decision=decision,
                      reason="plan", hinted=hinted, prompt_tokens=prompt, cached_tokens=cached,
                      kept_before=kept)


# ---- policies -------------------------------------------------------------------------------
def test_a_cache_event_is_built_with_every_field_and_stays_frozen() -> None:
    """Its hand-written __init__ names each field once, in order, and sets every one."""
    fields = [f.name for f in dataclasses.fields(CacheEvent)]
    assert list(inspect.signature(CacheEvent).parameters) == fields
    built = event(prompt=1000, cached=900)
    assert [getattr(built, name) for name in fields] == [
        "r", "s", "s", "b", "preserve", "plan", False, 1000, 900, True, None]
    assert built.new_tokens == 100 and built == event(prompt=1000, cached=900)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.slot = 3  # type: ignore[misc]


def test_small_increment_keeps_growing_contexts_and_drops_unused_ones() -> None:
    policy = SmallIncrement(max_new_tokens=200)
    assert policy.decide(event()) is None  # a preserve span that is reused stays
    dropped = policy.decide(event(prompt=3000, cached=100))
    assert dropped is not None and dropped.decision == "flush"
    assert "2900 new tokens" in dropped.reason
    assert policy.decide(event(prompt=3000, cached=100, kept=False)) is None  # first of a span
    routed = policy.decide(event("deferred", prompt=1000, cached=900))
    assert routed is not None and routed.decision == "preserve"
    assert "small increment: 100 new tokens over 900 cached" in routed.reason
    cold = policy.decide(event("deferred", kept=False))
    assert cold is not None and cold.decision == "flush"


class FlushReplies(orla.MemoryPolicy):
    def decide(self, event: orla.runtime.CacheEvent) -> orla.runtime.CacheChoice | None:
        return orla.runtime.CacheChoice("flush", "replies are never followed up") \
            if event.stage == "reply" else None


def test_hints_win_then_user_policies_then_the_plan() -> None:
    policies = AgentLayer([FlushReplies(), SmallIncrement()])
    assert decide(event(stage="reply"), policies).reason == "replies are never followed up"
    assert decide(event(stage="reply", hinted=True), policies).decision == "preserve"
    assert decide(event(stage="other"), policies).reason == "plan"


# ---- shared prefix caches (vLLM/SGLang style), on the simulator ------------------------------
def request(text: str) -> ChatRequest:
    return ChatRequest(model="qwen3-4b", messages=[{"role": "user", "content": text}],
                       params={"max_tokens": 4})


def test_a_global_reset_waits_until_no_other_run_keeps_a_context() -> None:
    async def scenario() -> list[str]:
        engine = SimEngine("qwen3-4b", clock="virtual")
        memory = MemoryManager()
        memory.add_shared("b", engine)
        for run in ("r1", "r2"):
            async with memory.pin(run, "b"):
                await engine.chat(request(f"{CONTEXT} {run}"))
            await memory.after_stage(hinted(run, "preserve"))
        actions = [(await memory.after_stage(hinted("r1", "flush")))[1]]
        cached_after_soft = (await engine.metrics())["prefix_cache_tokens"]
        actions.append((await memory.after_stage(hinted("r2", "flush")))[1])
        cached_after_reset = (await engine.metrics())["prefix_cache_tokens"]
        await engine.aclose()
        assert cached_after_soft > 0 and cached_after_reset == 0
        return actions

    soft, reset = asyncio.run(scenario())
    assert soft == "soft flush: other runs would lose cached work"
    assert reset == "reset the engine's prefix cache"


def hinted(run: str, decision: str) -> CacheEvent:
    return CacheEvent(run_id=run, node="s", stage="s", backend="b", decision=decision,
                      reason="plan", hinted=True, prompt_tokens=10, cached_tokens=0,
                      kept_before=False)


def test_memory_pressure_drops_the_contexts_of_idle_runs() -> None:
    async def scenario() -> tuple[str, list[dict[str, object]], float]:
        engine = SimEngine("qwen3-4b", clock="virtual", capacity_tokens=2048)
        memory = MemoryManager(pressure=0.1, pressure_check_s=0.0)
        memory.add_shared("b", engine)
        async with memory.pin("idle", "b"):
            await engine.chat(request(CONTEXT))
        assert await engine.usage() > 0.1
        _, action = await memory.after_stage(hinted("idle", "preserve"))
        usage = await engine.usage()
        await engine.aclose()
        return action, memory.take_log("idle"), usage

    action, log, usage = asyncio.run(scenario())
    assert action.startswith("reset the engine's prefix cache (KV usage")
    assert log[0]["reason"].startswith("memory pressure") and usage == 0.0


# ---- slots lent and restored, on the real engine --------------------------------------------
def test_a_lent_slot_is_saved_and_restored_with_its_cache(llama_engine: LocalEngine) -> None:
    async def scenario() -> tuple[int, list[dict[str, object]]]:
        control = LlamaCppControl(llama_engine.url, timeout=60)
        spec = orla.backends.llamacpp("local", url=llama_engine.url)
        client = OpenAICompatibleBackend(spec)
        memory = MemoryManager()
        memory.add_slots("local", control, len(await control.slots()))

        async def ask(run: str, text: str) -> int:
            async with memory.pin(run, "local") as slot:
                result = await client.chat(ChatRequest(
                    model=MODEL, messages=[{"role": "user", "content": text}],
                    params={"max_tokens": 4, "temperature": 0}, slot=slot))
            return result.cached_tokens

        await ask("a", f"{CONTEXT} Question A.")
        await ask("b", f"{CONTEXT} Question B, longer than A.")
        await ask("c", "Something else entirely, on the slot that a lends.")  # lends a's slot
        await memory.end_run("c")  # erases that slot
        restored = await ask("a", f"{CONTEXT} Question A. And a follow-up.")
        await ask("d", f"{CONTEXT} Question D.")  # lends b's slot, which b saves
        log = memory.take_log("a") + memory.take_log("b")
        for run in ("a", "b", "d"):
            await memory.end_run(run)
        await client.aclose()
        await control.aclose()
        return restored, log

    restored, log = asyncio.run(scenario())
    assert [entry["decision"] for entry in log] == ["lend", "restore", "lend"]
    assert str(log[0]["action"]).startswith("save slot")
    assert str(log[1]["action"]).startswith("restore slot")
    assert restored > 100  # the saved context came back after the slot was erased


# ---- policies inside a run, streaming and events --------------------------------------------
@orla.stage(model="light")
def draft(topic: str) -> str:
    return "".join(orla.stream(f"{CONTEXT} Write about {topic}.", max_tokens=16))


@orla.stage(model="light")
async def reply(topic: str, text: str) -> str:
    pieces = [piece async for piece in orla.astream(f"{CONTEXT} {text} Reply.", max_tokens=16)]
    return "".join(pieces)


@orla.workflow
def write(topic: str) -> str:
    return reply(topic, draft(topic))


def test_streamed_text_reaches_the_body_and_the_event_listener() -> None:
    plan = orla.compile(write, backends=[orla.backends.simulator("sim", "qwen3-4b")],
                        mapping={"light": "sim/qwen3-4b"})
    events: list[orla.runtime.RunEvent] = []

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, memory_policies=[FlushReplies()]) as pool:
            return await orla.arun(plan, pool=pool, on_event=events.append, topic="docks")

    result = asyncio.run(go())
    assert result.ok, result.error
    tokens = {node: "".join(e.data["text"] for e in events if e.kind == "token" and
                            e.node == node) for node in ("draft", "reply")}
    assert tokens["reply"] == result.output and tokens["draft"]
    kinds = [e.kind for e in events]
    assert kinds[0] == "stage_start" and kinds[-1] == "run_end"
    assert kinds.count("stage_end") == 2 and kinds.count("call") == 2
    decisions = {e.node: e.data["reason"] for e in events if e.kind == "cache"}
    assert decisions["reply"] == "replies are never followed up"


def test_a_failing_listener_is_dropped_not_the_run() -> None:
    plan = orla.compile(write, backends=[orla.backends.simulator("sim", "qwen3-4b")],
                        mapping={"light": "sim/qwen3-4b"})

    heard: list[str] = []

    def broken(event: orla.runtime.RunEvent) -> None:
        heard.append(event.kind)
        raise ValueError("view crashed")

    result = orla.run(plan, topic="docks", on_event=broken)
    assert result.ok and "ValueError: view crashed" in result.warnings[0]
    assert heard == ["stage_start"]  # no event after it is built for the dropped listener


def test_the_real_engine_streams_in_pieces(llama_engine: LocalEngine) -> None:
    plan = orla.compile(write, backends=[orla.backends.llamacpp("local", url=llama_engine.url)],
                        mapping={"light": f"local/{MODEL}"})
    tokens: list[str] = []
    result = orla.run(plan, topic="docks",
                      on_event=lambda e: tokens.append(e.node or "") if e.kind == "token" else None)
    assert result.ok, result.error
    assert tokens.count("draft") > 1 and tokens.count("reply") > 1


# ---- an engine restarted in the middle of a run ---------------------------------------------
RESTARTS: list[LocalEngine] = []


@orla.stage(model="light")
async def before_restart(text: str) -> str:
    answer = await orla.agenerate(f"{CONTEXT} {text}", max_tokens=4)
    engine = RESTARTS[0]
    await asyncio.to_thread(engine.stop)
    await asyncio.to_thread(engine.start)
    return answer


@orla.stage(model="light")
async def after_restart(text: str, previous: str) -> str:
    return await orla.agenerate(f"{CONTEXT} {text} {previous}", max_tokens=4)


@orla.workflow
def restarted(text: str) -> str:
    return after_restart(text, before_restart(text))


def test_a_run_survives_an_engine_restart_between_its_stages(tmp_path: Path) -> None:
    engine = LocalEngine(EngineConfig(port=free_port(), slots=2, ctx_per_slot=1024,
                                      slot_dir=str(tmp_path / "slots")))
    engine.start(log_dir=tmp_path)
    RESTARTS[:] = [engine]
    try:
        plan = orla.compile(restarted, backends=[orla.backends.llamacpp("local", url=engine.url)],
                            mapping={"light": f"local/{MODEL}"})
        result = orla.run(plan, text="Where is crate 3?")
    finally:
        engine.stop()
    assert result.ok, result.error
    assert result.stage("after_restart").cached_tokens == 0  # the kept context died with it
    assert result.stage("before_restart").cache_action.startswith("keep slot")


def test_a_run_whose_engine_dies_ends_with_a_clear_error(tmp_path: Path) -> None:
    engine = LocalEngine(EngineConfig(port=free_port(), slots=1, ctx_per_slot=1024,
                                      slot_dir=str(tmp_path / "slots")))
    engine.start(log_dir=tmp_path)
    plan = orla.compile(restarted, backends=[orla.backends.llamacpp("local", url=engine.url)],
                        mapping={"light": f"local/{MODEL}"})
    RESTARTS[:] = [_Stopper(engine)]  # type: ignore[list-item]
    try:
        result = orla.run(plan, text="Where is crate 3?")
    finally:
        engine.stop()
    assert not result.ok
    assert "after_restart" in (result.error or "") and "is the engine running" in (
        result.error or "")
    assert result.stage("after_restart").status == "failed"
    assert any("failed" in str(e["action"]) for e in result.cache_log if e["node"] is None)


class _Stopper:
    """Stops the engine and does not bring it back."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    def stop(self) -> None:
        self.engine.stop()

    def start(self) -> None:
        return None


@pytest.fixture(autouse=True)
def _no_leftover_restarts() -> None:
    RESTARTS.clear()


class FakeSlots:
    """A slot engine that only counts erases."""

    def __init__(self) -> None:
        self.erased: list[int] = []

    async def erase(self, slot: int) -> int:
        self.erased.append(slot)
        return 0


def test_a_slot_borrowed_by_a_concurrent_stage_is_freed_after_its_call() -> None:
    async def scenario() -> tuple[list[int | None], dict[str, int], list[int], list[int]]:
        control = FakeSlots()
        memory = MemoryManager()
        memory.add_slots("b", control, 2)
        # the second pin is a second stage of run a while its first call is in flight
        async with memory.pin("a", "b") as own, memory.pin("a", "b") as borrowed:
            pass
        async with memory.pin("other", "b") as others:  # takes the freed slot, lends none
            pass
        table = memory.tables["b"]
        return [own, borrowed, others], dict(table.held), table.free, control.erased

    slots, held, free, erased = asyncio.run(scenario())
    assert slots == [0, 1, 1]
    assert held == {("a", ""): 0, ("other", ""): 1} and free == [] and erased == []


class SavingSlots(FakeSlots):
    """A slot engine that also saves and restores, keeping the files it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, int] = {}
        self.restored: list[tuple[int, str]] = []

    async def save(self, slot: int, filename: str) -> int:
        self.files[filename] = slot
        return 100

    async def restore(self, slot: int, filename: str) -> int:
        self.restored.append((slot, filename))
        return 100


def test_a_suspended_run_frees_its_slot_and_gets_it_back_restored() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], SavingSlots, MemoryManager]:
        control = SavingSlots()
        memory = MemoryManager()
        memory.add_slots("b", control, 1)
        async with memory.pin("graph:thread/1", "b"):
            pass
        entries = await memory.suspend("graph:thread/1")
        async with memory.pin("other", "b"):  # the freed slot serves another run
            pass
        await memory.end_run("other")
        async with memory.pin("graph:thread/1", "b"):
            pass
        return entries, control, memory

    entries, control, memory = asyncio.run(scenario())
    assert [e["decision"] for e in entries] == ["suspend"]
    (filename,) = control.files
    assert re.fullmatch(r"[A-Za-z0-9._-]+", filename)  # llama.cpp refuses other names
    assert control.restored == [(0, filename)]
    assert [e["decision"] for e in memory.take_log("graph:thread/1")] == ["restore"]
