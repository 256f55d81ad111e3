"""The house: a light import, adapters found by entry point, clear errors for what is
missing, typed pass notes, and compile on a plan leaving the plan it was given alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import orla_sdk as orla
from orla_sdk import adapters
from orla_sdk.errors import AdapterNotFound, MissingExtra, require_extra
from orla_sdk.examples.customer_support import support
from orla_sdk.ir import cache_of, mapping_of, priority_of

HEAVY = ["openai", "graphviz", "langgraph", "autogen_agentchat", "autogen_core", "xllamacpp",
         "starlette", "uvicorn", "http.server", "opentelemetry", "orla_langgraph",
         "orla_autogen"]


def test_importing_orla_loads_no_engine_server_framework_or_openai() -> None:
    probe = f"import sys, orla_sdk; print([m for m in {HEAVY!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_the_public_api_is_one_sorted_list_of_names_that_exist() -> None:
    assert orla.__all__ == sorted(orla.__all__)
    assert all(hasattr(orla, name) for name in orla.__all__)
    assert len(orla.__all__) <= 45


def test_installed_integrations_register_their_adapters() -> None:
    assert {"langgraph", "autogen"} <= {a.name for a in adapters.adapters()}


class _FrameworkApp:
    """An app object of a framework with no adapter installed."""


_FrameworkApp.__module__ = "langgraph.pregel.main"


@pytest.mark.parametrize("verb", ["compile", "serve", "render"])
def test_an_app_without_its_adapter_names_the_package_to_install(
        verb: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(adapters, "_registered", {})
    monkeypatch.setattr(adapters, "_loaded", True)
    call: dict[str, Any] = {"compile": lambda: orla.compile(_FrameworkApp()),
                            "serve": lambda: orla.serve(_FrameworkApp()),
                            "render": lambda: orla.render(_FrameworkApp(), str(tmp_path / "x.svg"))}
    with pytest.raises(AdapterNotFound, match=r"pip install orla-langgraph"):
        call[verb]()


class _ToyAdapter:
    name = "toy"

    def accepts(self, app: object) -> bool:
        return isinstance(app, _ToyApp)

    def compile(self, app: Any, **options: Any) -> orla.Plan:
        return orla.compile(support, **options)

    def serve(self, app: Any, **options: Any) -> Any:
        return ("served", app, options)


class _ToyApp:
    pass


def test_compile_serve_and_render_dispatch_to_a_registered_adapter(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(adapters, "_registered", dict(adapters._registered))
    adapters.register(_ToyAdapter())
    app = _ToyApp()
    assert orla.compile(app).name == "support"
    assert orla.serve(app, name="x") == ("served", app, {"name": "x"})
    assert Path(orla.render(app, str(tmp_path / "toy.dot"))).read_text().startswith("digraph")


def test_a_missing_extra_names_the_pip_install_that_fixes_it() -> None:
    with pytest.raises(MissingExtra, match=r"pip install 'orla_sdk\[proxy\]'"):
        require_extra("orla_no_such_module", "proxy", "orla serve")
    require_extra("json", "proxy", "orla serve")  # installed: no error


def test_pass_notes_read_back_typed() -> None:
    plan = orla.compile(support)
    classify, policy = plan.node("classify"), plan.node("policy_check")
    mapping = mapping_of(classify)
    assert mapping is not None and not mapping.routed
    assert mapping.target_key() == f"edge/{orla.backends.DEFAULT_LOCAL_MODEL}"
    priority = priority_of(policy)
    assert priority is not None and priority.source == "runtime" and priority.rule
    cache = cache_of(plan.node("acknowledge"))
    assert cache is not None and cache.decision == "flush"
    assert cache.reason == 'stage hint cache="flush"'
    assert priority_of(plan.node(plan.nodes[0].id)) is None  # the input node has no note


def test_compile_configures_a_copy_of_a_plan_and_keeps_its_backends() -> None:
    traced = orla.compile(support)
    before = traced.to_json()
    again = orla.compile(traced)
    assert traced.to_json() == before
    assert json.loads(again.to_json()) == json.loads(before)
    moved = orla.compile(traced, backends=[orla.backends.simulator("edge", "smollm2-135m"),
                                           orla.backends.simulator("datacenter")],
                         mapping={"light": "edge/smollm2-135m", "heavy": "datacenter/qwen3-8b"})
    assert {b.kind for b in moved.backends} == {"sim"}
    assert {b.kind for b in traced.backends} == {"llamacpp"}


def test_a_note_edited_in_place_is_read_anew() -> None:
    plan = orla.compile(support)
    node = plan.node("policy_check")
    first = priority_of(node)
    assert first is not None and priority_of(node) is first  # parsed once, while unchanged
    node.meta["priority"]["value"] = 7
    again = priority_of(node)
    assert again is not None and again.value == 7


def test_asking_the_adapters_imports_no_framework() -> None:
    probe = ("import sys, orla_sdk as orla\n"
             "try:\n    orla.compile(object())\nexcept orla.OrlaError:\n    pass\n"
             "print([m for m in sys.modules if m.split('.')[0] in "
             "('langgraph', 'autogen_agentchat', 'autogen_core')])")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
