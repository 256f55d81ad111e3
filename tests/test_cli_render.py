"""Diagrams and the ``orla`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import orla_sdk as orla
from orla_sdk.cli import main
from orla_sdk.examples.customer_support import support
from orla_sdk.render import plan_to_dot


@orla.stage(model="light")
def topics(text: str) -> list[str]: ...


@orla.stage(model="auto")
def summarize(topic: str) -> str: ...


@orla.workflow(backends=[orla.backends.llamacpp("local")],
               mapping={"light": f"local/{orla.backends.DEFAULT_LOCAL_MODEL}",
                        "auto": orla.OneBitStageMapper(simple="light", complex="light")})
def fan_out(text: str) -> list[str]:
    return [summarize(t) for t in topics(text)]


def test_dot_marks_spans_branches_maps_and_routed_stages() -> None:
    dot = plan_to_dot(orla.compile(support))
    assert "subgraph cluster_span1" in dot and "span1: preserve on datacenter" in dot
    assert "shape=diamond" in dot
    assert "branch_classify_needs_escalation -> acknowledge [label=true color=" in dot
    assert "branch_classify_needs_escalation -> reply [label=false color=" in dot
    assert "priority: by t.category, path 2" in dot
    routed = plan_to_dot(orla.compile(fan_out))
    assert "subgraph cluster_map_topics" in routed
    assert "peripheries=2" in routed and "routed (one_bit)" in routed
    assert "[each]" in routed


def test_render_writes_svg_and_png(tmp_path: Path) -> None:
    plan = orla.compile(support)
    svg = Path(orla.render(plan, str(tmp_path / "plan.svg")))
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    png = Path(orla.render(plan, str(tmp_path / "plan.png")))
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(orla.OrlaError, match=r"\.svg, \.png"):
        orla.render(plan, str(tmp_path / "plan.bmp"))


def test_cli_plan_prints_the_compiled_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "orla_sdk.examples.customer_support:support"]) == 0
    printed = capsys.readouterr().out
    assert printed == orla.compile(support).to_json()
    assert json.loads(printed)["name"] == "support"


def test_cli_summary_and_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "orla_sdk.examples.customer_support:support", "--summary"]) == 0
    table = capsys.readouterr().out
    assert "5 stages, 2 paths" in table and "preserve [span1]" in table
    target = tmp_path / "support.svg"
    assert main(["render", "orla_sdk.examples.customer_support:support", "-o", str(target)]) == 0
    assert target.exists()


def test_cli_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "orla_sdk.examples.customer_support"]) == 2
    assert "MODULE:WORKFLOW" in capsys.readouterr().err
    assert main(["plan", "orla_sdk.examples.customer_support:POLICIES"]) == 2
    assert "name a @orla.workflow" in capsys.readouterr().err


def test_console_script_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "orla_sdk.cli", "plan",
                           "orla_sdk.examples.customer_support:support", "--summary"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith("plan support: 5 stages")


def support_plan() -> orla.Plan:
    return orla.compile(support)


def test_cli_accepts_plan_factories_but_never_calls_other_functions(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "test_cli_render:support_plan", "--summary"]) == 0
    assert "plan support" in capsys.readouterr().out
    assert main(["plan", "orla_sdk.examples.customer_support:send_email"]) == 2
    assert "takes no arguments" in capsys.readouterr().err


def test_cli_output_into_a_closed_pipe_is_quiet() -> None:
    done = subprocess.run(
        f"{sys.executable} -m orla_sdk.cli plan examples.dag_math:dag_math | head -c 10",
        shell=True, capture_output=True, text=True, check=True)
    assert done.stdout == "{\n  \"backe"
    assert "Traceback" not in done.stderr
