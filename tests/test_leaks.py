"""No cache action fails a finished stage, and nothing outlives its owner: engines, slot
files, saved simulator slots, engine logs and slot folders.

The engine tests find engine processes by the test's own temporary folder, which every
engine started there names in its command line (its slot folder), so that engines of
other tests or other users never count.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import orla_sdk as orla
from orla_sdk.agents import AgentKey
from orla_sdk.backends import engine as engine_module
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.engine import EngineConfig, LocalEngine
from orla_sdk.backends.llamacpp_slots import LlamaCppControl
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.cli.commands import engine_command
from orla_sdk.errors import EngineError
from orla_sdk.ir import BackendSpec
from orla_sdk.runtime.memory import SAVE_ATTEMPTS, MemoryManager

GONE_WITHIN_S = 5.0


# ---- fakes ----------------------------------------------------------------------------------
class Slots:
    """A slot engine that records what it was asked; ``fail`` names the actions that raise."""

    def __init__(self, *fail: str) -> None:
        self.fail = set(fail)
        self.calls: list[tuple[str, object]] = []

    def _do(self, action: str, arg: object) -> None:
        self.calls.append((action, arg))
        if action in self.fail:
            raise EngineError(f"{action} refused by the fake engine")

    async def erase(self, slot: int) -> int:
        self._do("erase", slot)
        return 7

    async def save(self, slot: int, filename: str) -> int:
        self._do("save", filename)
        return 100

    async def restore(self, slot: int, filename: str) -> int:
        self._do("restore", filename)
        return 100

    async def forget(self, filename: str) -> bool:
        self._do("forget", filename)
        return True


class SharedCache:
    def __init__(self, fail: bool) -> None:
        self.fail, self.resets = fail, 0

    async def reset(self) -> int | None:
        self.resets += 1
        if self.fail:
            raise EngineError("reset refused by the fake engine")
        return 0

    async def usage(self) -> float | None:
        return 0.0


# ---- A: cache actions never fail what finished ------------------------------------------------
def test_the_end_of_a_run_tries_every_backend_and_slot_whatever_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    # the coder's slot would be saved as its template and left holding it: saving fails too
    broken, working = Slots("erase", "save"), Slots()
    broken_cache, working_cache = SharedCache(fail=True), SharedCache(fail=False)

    async def scenario() -> tuple[list[Any], MemoryManager]:
        memory = MemoryManager()
        memory.add_slots("broken", broken, 2)
        memory.add_slots("working", working, 1)
        memory.add_shared("broken-shared", broken_cache)
        memory.add_shared("working-shared", working_cache)
        key = AgentKey("w", "coder", "r")
        for backend in ("broken", "working"):
            async with memory.pin("r", backend):
                pass
        async with memory.pin("r", "broken", key, prompt="You are the coder. " * 8):
            pass
        for backend in ("broken-shared", "working-shared"):
            memory.shared[backend].keeping.add("r")
        return await memory.end_run("r"), memory

    with caplog.at_level(logging.WARNING, logger="orla_sdk.memory"):
        entries, memory = asyncio.run(scenario())
    actions = {(e["backend"], str(e["action"]).split(" (")[0]) for e in entries}
    assert ("broken", "erase slot 0 failed") in actions
    assert ("broken", "erase slot 1 failed") in actions
    assert ("broken", "no new template for coder") in actions
    assert ("working", "erase slot 0") in actions  # after the broken backend failed twice
    assert ("broken-shared", "reset the engine's prefix cache failed") in actions
    assert ("working-shared", "reset the engine's prefix cache") in actions
    assert broken_cache.resets == working_cache.resets == 1
    assert sorted(memory.tables["broken"].free) == [0, 1] and not memory.tables["broken"].held
    assert memory.kept == {}
    warned = [r.getMessage() for r in caplog.records]
    assert sum("erase slot" in w and "refused by the fake engine" in w for w in warned) == 2
    assert any("reset" in w and "broken-shared" in w for w in warned)


@orla.stage(model="light", cache="flush")
def first(text: str) -> str:
    return orla.generate(f"Summarise: {text}", max_tokens=4)


@orla.stage(model="light", cache="preserve")
def second(text: str, summary: str) -> str:
    return orla.generate(f"{text} {summary} Answer.", max_tokens=4)


@orla.workflow
def two_steps(text: str) -> str:
    return second(text, first(text))


class Refusing:
    """Wraps a slot engine; every cache action raises, calls are served."""

    def __init__(self, inner: SimEngine) -> None:
        self.inner = inner

    async def erase(self, slot: int) -> int:
        raise EngineError("erase refused")

    async def save(self, slot: int, filename: str) -> int:
        raise EngineError("save refused")

    async def restore(self, slot: int, filename: str) -> int:
        raise EngineError("restore refused")


def test_a_failing_cache_action_fails_no_stage_and_no_run(
        caplog: pytest.LogCaptureFixture) -> None:
    plan = orla.compile(two_steps, backends=[orla.backends.simulator(
        "sim", "smollm2-135m", clock="virtual")], mapping={"light": "sim/smollm2-135m"})

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends) as pool:
            table = pool.memory.tables["sim"]
            table.control = Refusing(table.control)  # type: ignore[arg-type]
            return await orla.arun(plan, pool=pool, text="crates left the dock on time")

    with caplog.at_level(logging.WARNING, logger="orla_sdk.memory"):
        result = asyncio.run(go())
    assert result.ok, result.error
    assert [s.status for s in result.stages] == ["done", "done"]
    assert result.stage("first").cache_action.startswith("erase slot 0 failed (EngineError")
    assert result.stage("second").cache_action == "keep slot 1"  # erased at the run's end:
    ended = [e for e in result.cache_log if e["node"] is None]
    assert [str(e["action"]).split(" (")[0] for e in ended] == ["erase slot 1 failed"]
    assert any("erase refused" in r.getMessage() for r in caplog.records)


class Plain:
    """An engine without cache control: every call answers "ok"."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec

    async def chat(self, request: ChatRequest) -> ChatResult:
        return ChatResult(content="ok", tool_calls=[], finish_reason="stop", prompt_tokens=8,
                          completion_tokens=1, cached_tokens=0, ttft_s=0.0, duration_s=0.0)

    async def aclose(self) -> None:
        pass


def test_runs_on_an_engine_without_cache_control_leave_no_kept_context_behind() -> None:
    backend = orla.backends.openai_compatible("plain", "http://127.0.0.1:9/v1")
    plan = orla.compile(two_steps, backends=[backend], mapping={"light": "plain/m"})

    async def go() -> tuple[list[str], dict[str, set[str]]]:
        async with orla.BackendPool(plan.backends, clients={"plain": Plain(backend)}) as pool:
            results = [await orla.arun(plan, pool=pool, text=f"crate {i}") for i in range(3)]
            return [r.stage("second").cache_action for r in results], pool.memory.kept

    actions, kept = asyncio.run(go())
    assert actions == ["keep"] * 3 and kept == {}


def test_slot_saving_is_turned_off_only_after_repeated_failures() -> None:
    control = Slots("save")

    async def lend_to(memory: MemoryManager, run: str) -> None:
        async with memory.pin(run, "b"):  # the one slot is lent by the run before
            pass

    async def scenario() -> list[bool]:
        memory = MemoryManager()
        memory.add_slots("b", control, 1)
        table, seen = memory.tables["b"], []
        await lend_to(memory, "r0")
        for run in ("r1", "r2"):  # two failures, then a success: the count starts over
            await lend_to(memory, run)
            seen.append(table.can_save)
        control.fail.clear()
        await lend_to(memory, "r3")
        control.fail.add("save")
        for run in [f"r{i}" for i in range(4, 4 + SAVE_ATTEMPTS)]:
            await lend_to(memory, run)
            seen.append(table.can_save)
        await lend_to(memory, "last")  # saving is off: not even tried
        return seen

    seen = asyncio.run(scenario())
    assert seen == [True, True, *[True] * (SAVE_ATTEMPTS - 1), False]
    saves = [arg for action, arg in control.calls if action == "save"]
    assert len(saves) == 2 + 1 + SAVE_ATTEMPTS


# ---- B: saved slots are forgotten ----------------------------------------------------------
def test_the_simulator_forgets_a_saved_slot_when_the_lend_or_the_run_ends() -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        sim = SimEngine("smollm2-135m", clock="virtual", max_batch=1)
        memory = MemoryManager()
        memory.add_slots("b", sim, 1)
        async with memory.pin("a", "b"):
            pass
        async with memory.pin("b", "b"):  # lends a's slot: a's context is saved
            pass
        lent = sim.saved_slots()
        async with memory.pin("a", "b"):  # a comes back: restored, its file forgotten
            pass
        returned = sim.saved_slots()
        await memory.end_run("b")  # b was lent out meanwhile: its saved slot goes too
        await memory.end_run("a")
        return lent, returned, sim.saved_slots()

    lent, returned, ended = asyncio.run(scenario())
    assert len(lent) == 1 and len(returned) == 1 and returned != lent  # b's, saved for a
    assert ended == []


def test_saved_slots_live_in_the_slot_folder_and_are_deleted(llama_engine: LocalEngine) -> None:
    folder = Path(llama_engine.config.slot_dir)

    async def scenario() -> tuple[bool, bool]:
        control = LlamaCppControl(llama_engine.url)  # finds the folder of an engine orla started
        try:
            await control.erase(0)
            body = {"messages": [{"role": "user", "content": "Keep this."}], "max_tokens": 2,
                    "id_slot": 0}
            httpx.post(f"{llama_engine.url}/v1/chat/completions", json=body,
                       timeout=60).raise_for_status()
            await control.save(0, "orla-leak-test-slot.bin")
            inside = (folder / "orla-leak-test-slot.bin").is_file()
            return inside, await control.forget("orla-leak-test-slot.bin")
        finally:
            await control.aclose()

    inside, forgotten = asyncio.run(scenario())
    assert inside and forgotten
    assert not (folder / "orla-leak-test-slot.bin").exists()
    assert not list(folder.parent.glob(f"{folder.name}?*"))  # nothing beside the folder


# ---- B: engines die with their owner, and leave nothing behind ------------------------------
def engines_under(folder: Path) -> list[int]:
    """Running engine processes whose command line names ``folder`` (their slot folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if b"orla_sdk.backends.engine" in command and str(folder).encode() in command \
                and state != "Z":
            pids.append(int(proc.name))
    return pids


def wait_for(condition: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


OWNERS = {
    "session": """
        from orla_sdk.serving import ServingSession
        session = ServingSession(plan)
        session.start()
    """,
    "pool": """
        import asyncio
        pool = orla.BackendPool(plan.backends)
        asyncio.run(pool.start())
    """,
}


@pytest.mark.parametrize(("owner", "ending"), [("session", "exit"), ("pool", "exit"),
                                               ("session", "sigkill")])
def test_an_owner_that_never_closes_leaves_no_engine_or_files_behind(
        tmp_path: Path, owner: str, ending: str) -> None:
    script = textwrap.dedent("""
        import sys, time
        import orla_sdk as orla
        plan = orla.Plan(name="leak", backends=[orla.backends.llamacpp("local")],
                         runnable=False)
    """) + textwrap.dedent(OWNERS[owner]) + textwrap.dedent("""
        print("started", flush=True)
        if sys.argv[1] == "sigkill":
            time.sleep(600)
    """)
    env = {**os.environ, "ORLA_STATE_DIR": str(tmp_path)}
    starter = subprocess.Popen([sys.executable, "-c", script, ending], stdout=subprocess.PIPE,
                               text=True, env=env)
    try:
        assert starter.stdout is not None
        assert starter.stdout.readline().strip() == "started"
        assert engines_under(tmp_path), "the owner started no engine"
        if ending == "sigkill":
            starter.kill()  # no finally, no atexit, no finalizer runs in the owner
        assert starter.wait(timeout=30) == (-signal.SIGKILL if ending == "sigkill" else 0)
    finally:
        starter.kill()
    assert wait_for(lambda: not engines_under(tmp_path), GONE_WITHIN_S)
    assert wait_for(lambda: not list(tmp_path.iterdir()), GONE_WITHIN_S), \
        sorted(p.name for p in tmp_path.iterdir())  # no slot folder, no log


def test_a_run_without_a_pool_leaves_no_log_or_folder_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORLA_STATE_DIR", str(tmp_path))
    plan = orla.compile(two_steps, backends=[orla.backends.llamacpp("local")],
                        mapping={"light": f"local/{orla.backends.DEFAULT_LOCAL_MODEL}"})
    result = orla.run(plan, text="crates left the dock on time")
    assert result.ok, result.error
    assert not engines_under(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_run_cancelled_while_its_pool_starts_leaves_no_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORLA_STATE_DIR", str(tmp_path))
    plan = orla.compile(two_steps, backends=[orla.backends.llamacpp("local")],
                        mapping={"light": f"local/{orla.backends.DEFAULT_LOCAL_MODEL}"})

    async def cancel_while_starting() -> None:
        task = asyncio.ensure_future(orla.arun(plan, text="never runs"))
        assert await asyncio.to_thread(wait_for, lambda: bool(engines_under(tmp_path)), 30)
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()

    asyncio.run(cancel_while_starting())

    def gone() -> bool:
        gc.collect()
        return not engines_under(tmp_path)

    assert wait_for(gone, 30.0)  # the engine is stopped once its start, in a thread, returns


def test_an_async_start_cancelled_midway_stops_its_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORLA_STATE_DIR", str(tmp_path))
    engine = LocalEngine(EngineConfig(slots=1, ctx_per_slot=256))

    async def cancel_while_starting() -> None:
        task = asyncio.ensure_future(engine.astart())
        assert await asyncio.to_thread(wait_for, lambda: bool(engines_under(tmp_path)), 30)
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()

    asyncio.run(cancel_while_starting())
    # stopped by astart itself, while the engine object is still referenced here
    assert engine.process is None and not engines_under(tmp_path)


# ---- B: `orla engine start` is recorded before it is waited for ------------------------------
NEVER_HEALTHY = ("import sys, orla_sdk.backends.engine as engine\n"
                 "engine.is_healthy = lambda url: False  # the start never ends by itself\n"
                 "from orla_sdk.cli.commands import main\n"
                 "sys.exit(main(['engine', 'start', '--slots', '1']))\n")


def test_an_interrupted_engine_start_is_seen_then_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORLA_STATE_DIR", str(tmp_path))
    state = tmp_path / "engine.json"
    starting = subprocess.Popen([sys.executable, "-c", NEVER_HEALTHY], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "ORLA_STATE_DIR": str(tmp_path)})
    try:
        assert wait_for(state.exists, 30), "the start did not record the engine"
        assert wait_for(lambda: bool(engines_under(tmp_path)), 30)
        assert json.loads(state.read_text())["pid"] in engines_under(tmp_path)
        seen = engine_command("status", 0, 1)
        assert seen.startswith(("engine running at", "engine starting at")), seen
        starting.send_signal(signal.SIGTERM)  # as `timeout` or `kill` would
        _, err = starting.communicate(timeout=30)
    finally:
        starting.kill()
    assert starting.returncode == 2 and "interrupted while the engine was starting" in err
    assert not engines_under(tmp_path) and not state.exists()


def test_an_engine_start_that_times_out_is_stopped_and_forgotten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORLA_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(engine_module, "is_healthy", lambda url: False)
    try:
        with pytest.raises(EngineError, match="did not answer"):
            engine_module.start_background(EngineConfig(slots=1, ctx_per_slot=256), timeout=2)
        assert not engines_under(tmp_path)
        assert not (tmp_path / "engine.json").exists()
        assert [p.name for p in tmp_path.iterdir() if p.suffix == ".log"]  # kept: it failed
    finally:
        engine_module.stop_background()


def test_a_client_that_fails_to_close_still_lets_the_pool_stop_its_engines() -> None:
    class Engine:
        stopped = False

        def stop(self) -> None:
            Engine.stopped = True

    async def refuse() -> None:
        raise RuntimeError("the client would not close")

    async def scenario() -> None:
        pool = orla.BackendPool([orla.backends.simulator("a", "smollm2-135m")])
        await pool.start()
        pool.backends["a"].client.aclose = refuse  # type: ignore[method-assign]
        pool.connections["a"].engine = Engine()  # type: ignore[assignment]
        with pytest.raises(RuntimeError, match="would not close"):
            await pool.aclose()
        assert not pool.started and not pool.connections

    asyncio.run(scenario())
    assert Engine.stopped


def test_a_loop_whose_task_ignores_cancellation_still_stops(
        caplog: pytest.LogCaptureFixture) -> None:
    from orla_sdk.loop_thread import LoopThread

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                continue  # refuses to end

    thread = LoopThread("stubborn")
    thread.start()
    thread.submit(stubborn())
    worker = thread._thread
    thread.stop(timeout=0.2)
    assert worker is not None and not worker.is_alive()
    assert not thread.running and "still ran 0.2 s after being cancelled" in caplog.text
