"""Durable runs: a run killed at any point continues from its checkpoints, no completed
stage runs again, and a tool with effects is called at most once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import orla_sdk as orla
from orla_sdk.runtime import SQLiteCheckpoints

APP = Path(__file__).with_name("durable_app.py")


def run_app(db: Path, charges: Path, die_at: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, str(APP), str(db), str(charges), die_at],
                          capture_output=True, text=True, timeout=60)
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    code, report = run_app(folder / "runs.db", folder / "charges", "never")
    assert code == 0 and report["output"]
    return report


def test_killed_right_after_a_charge_the_resumed_run_does_not_charge_again(
        tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    db, charges = tmp_path / "runs.db", tmp_path / "charges"
    code, _ = run_app(db, charges, "answer")
    assert code == -9  # SIGKILL while the model answered, after charge_card ran
    assert charges.read_text().splitlines() == ["5 order-7:checkout/g0/t0/c0/charge_card"]
    code, report = run_app(db, charges, "never")
    assert code == 0
    assert len(charges.read_text().splitlines()) == 1
    assert report["output"] == uninterrupted["output"]


def test_killed_between_stages_the_resumed_run_skips_the_completed_stage(
        tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    db, charges = tmp_path / "runs.db", tmp_path / "charges"
    code, _ = run_app(db, charges, "notify")
    assert code == -9
    code, report = run_app(db, charges, "never")
    assert code == 0
    assert report["requests"] == 0 and report["restored"] == ["checkout"]
    assert report["output"] == uninterrupted["output"]
    assert len(charges.read_text().splitlines()) == 1
    stored = SQLiteCheckpoints(db).run("order-7")
    assert stored is not None and stored.status == "done"


# ---- in process, on plain stages ----------------------------------------------------------
calls: list[str] = []


@orla.stage(model="m")
def draft(topic: str) -> str:
    calls.append(f"draft {topic}")
    return f"draft about {topic}"


@orla.stage(model="m")
def polish(text: str) -> str:
    calls.append(f"polish {text}")
    if "fail" in text:
        raise RuntimeError("the polisher is down")
    return text.upper()


@orla.workflow
def write(topic: str) -> list[str]:
    return [polish(draft(topic))]


@orla.workflow
def write_each(topics: list[str]) -> list[str]:
    return [polish(draft(t)) for t in topics]


PLAN = orla.compile(write_each, backends=[orla.backends.simulator("sim", clock="virtual")],
                    mapping={"m": "sim/qwen3-8b"})


def test_a_failed_run_resumes_without_redoing_completed_stages(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    calls.clear()
    first = orla.run(PLAN, run_id="r1", checkpoint=db, topics=["a", "fail", "c"])
    assert not first.ok and "polisher is down" in (first.error or "")
    done_before = list(calls)
    calls.clear()
    again = orla.resume(PLAN, "r1", checkpoint=db)
    # the stages that completed are restored; only the failed one (and what it feeds) runs
    failed = "polish draft about fail"
    assert [c for c in calls if c in done_before and c != failed] == []
    assert not again.ok
    assert {r.node for r in again.stages if r.restored} >= {"draft"}


def test_a_finished_run_gives_its_result_again_without_running_anything(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    first = orla.run(PLAN, run_id="r2", checkpoint=db, topics=["x", "y"])
    calls.clear()
    again = orla.run(PLAN, run_id="r2", checkpoint=db, topics=["x", "y"])
    assert calls == [] and again.output == first.output == ["DRAFT ABOUT X", "DRAFT ABOUT Y"]
    assert all(r.restored for r in again.stages) and len(again.stages) == 4
    assert orla.resume(PLAN, "r2", checkpoint=db).output == first.output


def test_misused_run_ids_get_clear_errors(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    orla.run(PLAN, run_id="r3", checkpoint=db, topics=["x"])
    with pytest.raises(orla.OrlaError, match=r"started with other inputs.*orla\.resume"):
        orla.run(PLAN, run_id="r3", checkpoint=db, topics=["z"])
    other = orla.compile(write, backends=PLAN.backends, mapping={"m": "sim/qwen3-8b"})
    with pytest.raises(orla.OrlaError, match="another version of workflow"):
        orla.run(other, run_id="r3", checkpoint=db, topic="x")
    with pytest.raises(orla.OrlaError, match="needs a run_id"):
        orla.run(PLAN, checkpoint=db, topics=["x"])
    with pytest.raises(orla.OrlaError, match="no run 'nope'"):
        orla.resume(PLAN, "nope", checkpoint=db)


def test_a_recorded_effect_called_again_with_other_arguments_is_not_made(
        tmp_path: Path) -> None:
    from orla_sdk.backends.base import ToolCall
    from orla_sdk.runtime.checkpoint import Durable
    from orla_sdk.runtime.tool_calls import ToolRunner
    from orla_sdk.tools import tool_spec

    made: list[int] = []

    def pay(amount: int) -> str:
        made.append(amount)
        return f"paid {amount}"

    def runner() -> ToolRunner:
        durable = Durable.begin(SQLiteCheckpoints(tmp_path / "runs.db"), PLAN, "r4",
                                {"topics": ["x"]})
        return ToolRunner({"pay": pay}, {"pay": tool_spec(orla.tool(effect=True)(pay))},
                          durable=durable)

    key = "draft/g0/t0/c0/pay"
    first = asyncio.run(runner().run(ToolCall("1", "pay", '{"amount": 10}'), key))
    same = asyncio.run(runner().run(ToolCall("1", "pay", '{"amount": 10}'), key))
    other = asyncio.run(runner().run(ToolCall("1", "pay", '{"amount": 20}'), key))
    assert made == [10] and first == same == "paid 10"
    assert 'already made in an earlier attempt of this run, with the arguments {"amount": ' \
           '10}, and returned: paid 10. It is not made again.' in other
