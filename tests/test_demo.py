"""``orla demo``: the live view of the customer-support run, on the in-process simulator."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys

import pytest
from rich.console import Console

import orla_sdk as orla
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.http import serve_http
from orla_sdk.cli import commands as cli
from orla_sdk.cli.demo import DemoView
from orla_sdk.examples.customer_support import SAMPLE_TICKET, Triage, support
from orla_sdk.runtime import CallRecord, RunResult, StageRecord
from orla_sdk.runtime.events import RunEvent

STAGES = ["classify", "policy_check", "route_ticket", "acknowledge", "reply"]
STATES = "waiting|running|done|skipped|failed"


def stage_states(out: str) -> dict[str, str]:
    """Each stage row of the final stage table: stage -> state."""
    rows = re.findall(rf"^ *({'|'.join(STAGES)}) +({STATES})\b", out, re.MULTILINE)
    return dict(rows)


def test_demo_on_the_simulator_prints_every_stage_branch_and_cache_decision(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # the narrowest usual terminal: nothing is cut
    assert cli.main(["demo", "--backend", "sim", "--ticket", "My app crashes on start"]) == 0
    out = capsys.readouterr().out
    assert "ticket: My app crashes on start" in out
    header = re.search(r"^ *stage +state +backend +prompt +compl\. +cached +TTFT s +wait s +"
                       r"streamed$", out, re.MULTILINE)
    assert header is not None
    states = stage_states(out)
    assert list(states) == STAGES  # the plan's stages, in topological order
    assert {states[s] for s in STAGES[:3]} == {"done"}
    assert sorted([states["acknowledge"], states["reply"]]) == ["done", "skipped"]
    taken = re.search(r"^branch classify\.needs_escalation took (True|False) -> (\w+)$", out,
                      re.MULTILINE)
    assert taken is not None
    assert states[taken.group(2)] == "done"
    assert re.search(r"^ *classify +done +edge +\d+ +\d+ +\d+ +[\d.]+ +[\d.]+ +\d*$", out,
                     re.MULTILINE)
    assert "classification (classify)" in out and "needs_escalation" in out
    assert "cache decisions" in out
    decisions = re.findall(r"\b(classify|policy_check|route_ticket|reply|acknowledge)\s+"
                           r"(edge|datacenter)\s+(flush|preserve)\b", out)
    assert {d[0] for d in decisions} >= {"classify", "policy_check", "route_ticket"}
    assert re.search(r"^ *[\d.]+ +policy_check +read_policy_yaml\(", out, re.MULTILINE)
    assert re.search(r"^ *[\d.]+ +route_ticket +read_team_descriptions\(", out, re.MULTILINE)
    assert re.search(r"^output: ", out, re.MULTILINE)


def test_demo_without_a_terminal_takes_the_sample_and_never_prompts() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run([sys.executable, "-m", "orla_sdk.cli", "demo", "--backend", "sim"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Ticket (Enter" not in done.stdout
    assert "ticket: " + SAMPLE_TICKET[:60] in done.stdout
    assert "\x1b[" not in done.stdout  # no live refresh, no colours: plain final tables
    assert list(stage_states(done.stdout)) == STAGES


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_demo_ticket_asks_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    asked: list[str] = []
    typed = iter(["  Printer on fire  ", ""])

    def fake_input(prompt: str) -> str:
        asked.append(prompt)
        return next(typed)

    monkeypatch.setattr("builtins.input", fake_input)
    assert cli.demo_ticket(None, "sample") == "Printer on fire"
    assert cli.demo_ticket(None, "sample") == "sample"  # Enter takes the sample
    assert asked == ["Ticket (Enter for the sample): "] * 2
    assert cli.demo_ticket("given", "sample") == "given"  # --ticket never asks
    assert len(asked) == 2


def test_demo_plans_move_backends_and_keep_the_logical_mapping() -> None:
    sim = cli.demo_plan(support, cli.demo_moves(support, "sim", {}))
    assert set(sim.mapping) == set(support.mapping or {})
    assert {(b.name, b.kind, (b.models or [""])[0]) for b in sim.backends} == {
        ("edge", "sim", "smollm2-135m"), ("datacenter", "sim", "qwen3-8b")}
    light, heavy = sim.mapping["light"], sim.mapping["heavy"]
    assert isinstance(light, orla.Target) and isinstance(heavy, orla.Target)
    assert (light.backend, light.model, heavy.backend, heavy.model) == (
        "edge", "smollm2-135m", "datacenter", "qwen3-8b")
    assert heavy.params == {"temperature": 0.2, "max_tokens": 512}  # params are kept
    remote = cli.demo_plan(support, cli.demo_moves(support, "llamacpp", {
        "light": ("http://a:1/v1", "m1"), "heavy": ("http://b:2", "m2")}))
    assert {(b.name, b.kind, b.url) for b in remote.backends} == {
        ("edge", "openai", "http://a:1/v1"), ("datacenter", "openai", "http://b:2")}
    assert sim.to_json().count('"node"') == remote.to_json().count('"node"')


def test_demo_on_openai_compatible_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    light, stop_light = serve_http(SimEngine("smollm2-135m", clock="real"))
    heavy, stop_heavy = serve_http(SimEngine("qwen3-8b", clock="real"))
    try:
        assert cli.main(["demo", "--ticket", "t", "--light", light, "--heavy", f"{heavy}/v1",
                         "--light-model", "smollm2-135m", "--heavy-model", "qwen3-8b"]) == 0
    finally:
        stop_light()
        stop_heavy()
    states = stage_states(capsys.readouterr().out)
    assert list(states) == STAGES and states["classify"] == "done"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("url, says", [("not-a-url", "is not an http(s) URL"),
                                       ("http://127.0.0.1:{port}/v1", "cannot reach")])
def test_demo_on_a_bad_or_dead_endpoint_ends_with_one_line_and_exit_1(
        url: str, says: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["orla_sdk.runtime.pool"], "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(sys.modules["orla_sdk.runtime.pool"], "ENGINE_DOWN_S", 0.0)
    argv = ["demo", "--backend", "sim", "--ticket", "t",
            "--light", url.format(port=closed_port())]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("orla: error: ") and says in err
    assert "Traceback" not in err


# ---- the view, fed a scripted run ------------------------------------------------------
def event(kind: str, node: str | None = None, /, **data: object) -> RunEvent:
    return RunEvent(kind, "run1", node, dict(data))  # type: ignore[arg-type]


def call(prompt: int, completion: int, cached: int, ttft: float) -> CallRecord:
    return CallRecord(backend="datacenter", model="m", prompt_tokens=prompt,
                           completion_tokens=completion, cached_tokens=cached,
                           queue_wait_s=0.5, ttft_s=ttft, duration_s=1.0)


def scripted_run(view: DemoView) -> None:
    triage = Triage(category="billing", product="Pro", issue="charged twice",
                    customer_request="refund", needs_escalation=True)
    classify = StageRecord("classify", "classify", calls=[call(80, 40, 0, 0.2)])
    view.handle(event("stage_start", "classify", stage="classify", item=None))
    view.handle(event("call", "classify", item=None, call=classify.calls[0]))
    view.handle(event("stage_end", "classify", record=classify, output=triage))
    view.handle(event("cache", "classify", node="classify", item=None, backend="edge",
                      decision="flush", reason="r", action="erase slot 0", cached_tokens=0))
    view.handle(event("branch", "branch:classify.needs_escalation", item=None, choice=True))
    for node in ("policy_check", "route_ticket"):
        view.handle(event("stage_start", node, stage=node, item=None))
    view.handle(event("token", "policy_check", item=None, text="a"))
    view.handle(event("tool_call", "route_ticket", item=None, tool="read_team_descriptions",
                      arguments="{}", result="payments: ..."))
    view.handle(event("tool_call", "policy_check", item=None, tool="read_policy_yaml",
                      arguments='{"category": "billing"}', result="Refund ..."))
    view.handle(event("token", "policy_check", item=None, text="b"))
    view.handle(event("stage_end", "reply", record=StageRecord("reply", "reply",
                                                                    "skipped")))


def test_view_folds_a_scripted_run_into_its_state() -> None:
    view = DemoView(orla.compile(support), inputs={"ticket": "charged twice"})
    assert list(view.rows) == STAGES
    assert {r.state for r in view.rows.values()} == {"waiting"}
    assert view.rows["classify"].backend == "edge"
    scripted_run(view)
    states = {name: row.state for name, row in view.rows.items()}
    assert states == {"classify": "done", "policy_check": "running",
                      "route_ticket": "running", "acknowledge": "waiting", "reply": "skipped"}
    assert view.rows["classify"].counters() == ["80", "40", "0", "0.20", "0.50"]
    assert view.rows["policy_check"].streamed == 2
    assert view.classification is not None and view.classification["category"] == "billing"
    assert [(t.stage, t.tool) for t in view.tools] == [
        ("route_ticket", "read_team_descriptions"), ("policy_check", "read_policy_yaml")]
    assert [(b.branch, b.choice, b.runs) for b in view.branches] == [
        ("classify.needs_escalation", True, ["acknowledge"])]
    assert [(c.node, c.decision, c.action) for c in view.cache] == [
        ("classify", "flush", "erase slot 0")]
    assert view.result is None

    result = RunResult("run1", "support", error="stage 'x' failed", cache_log=[
        {"node": None, "backend": "datacenter", "decision": "flush",
         "reason": "end of workflow", "action": "reset"}])
    view.handle(event("run_end", None, result=result))
    assert view.result is result and view.cache[-1].node == "(end of run)"

    screen = io.StringIO()
    Console(file=screen, width=120).print(view.render(final=True))
    out = screen.getvalue()
    assert stage_states(out) == states
    assert "branch classify.needs_escalation took True -> acknowledge" in out
    assert "error: stage 'x' failed" in out and "FAILED" in out


def test_view_shows_map_items_as_rows_of_their_own() -> None:
    view = DemoView(orla.compile(support))
    view.handle(event("stage_start", "route_ticket", item=0))
    view.handle(event("stage_start", "route_ticket", item=1))
    assert "route_ticket" not in view.rows
    assert [view.rows[f"route_ticket[{i}]"].state for i in (0, 1)] == ["running"] * 2
    assert view.rows["route_ticket[1]"].backend == "datacenter"
