"""Shared fixtures: the real llama.cpp engine, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orla_sdk.backends.engine import EngineConfig, LocalEngine
from tests.engine_tap import EngineTap


@pytest.fixture(scope="session")
def llama_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    """llama.cpp with SmolLM2-135M on a free port, two slots of 2,048 tokens each."""
    state = tmp_path_factory.mktemp("engine")
    engine = LocalEngine(EngineConfig(slots=2, ctx_per_slot=2048, slot_dir=str(state / "slots")))
    engine.start(log_dir=state)
    yield engine
    engine.stop()


@pytest.fixture
def engine_tap(llama_engine: LocalEngine) -> Iterator[EngineTap]:
    """A recording pass-through in front of the shared engine (see ``tests/engine_tap.py``)."""
    tap = EngineTap(llama_engine.url)
    yield tap
    tap.close()
