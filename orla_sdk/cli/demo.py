"""The live view of ``orla demo``: a run's stages, tool calls, branch and cache decisions.

``DemoView`` folds the events of one run (see ``orla_sdk.runtime.events``) into what the
terminal shows: each stage of the plan with its state, backend and the engine's counters,
the structured output of one stage (the classification), the tool calls of concurrent
stages as they interleave, the branch taken and the cache decisions. ``show_run`` runs a
plan under the view, refreshed live on a terminal, and prints the final tables once at
the end (the only thing it prints when the output is not a terminal).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from rich import box
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orla_sdk.ir import Node, Plan, mapping_of
from orla_sdk.runtime.events import RunEvent
from orla_sdk.runtime.executor import arun
from orla_sdk.runtime.records import CallRecord, RunResult, StageRecord

StageState = Literal["waiting", "running", "done", "skipped", "failed"]
STATE_STYLES: dict[str, str] = {"waiting": "dim", "running": "bold yellow", "done": "green",
                                "skipped": "dim", "failed": "bold red"}
LIVE_TOOL_LINES = 6  # the tool-call log scrolls: the live view keeps its last lines
CLIP = 80  # characters of a tool call (name, arguments and result) shown in the log


@dataclass
class StageRow:
    """One stage of the plan as the view shows it."""

    label: str
    backend: str
    state: StageState = "waiting"
    calls: list[CallRecord] = field(default_factory=list)
    streamed: int = 0  # streamed text chunks (tokens) seen so far

    def counters(self) -> list[str]:
        """Prompt, completion and cached tokens, TTFT and queue wait, as table cells."""
        if not self.calls:
            return ["", "", "", "", ""]
        ttft = self.calls[0].ttft_s
        return [str(sum(c.prompt_tokens for c in self.calls)),
                str(sum(c.completion_tokens for c in self.calls)),
                str(sum(c.cached_tokens for c in self.calls)),
                "" if ttft is None else f"{ttft:.2f}",
                f"{sum(c.queue_wait_s for c in self.calls):.2f}"]


@dataclass(frozen=True)
class ToolLine:
    at_s: float  # seconds since the run started
    stage: str
    tool: str
    arguments: str
    result: str


@dataclass(frozen=True)
class BranchLine:
    branch: str
    choice: Any
    runs: list[str]  # the stages this choice leads to


@dataclass(frozen=True)
class CacheLine:
    node: str  # "(end of run)" for the run's closing actions
    backend: str
    decision: str
    action: str


class DemoView:
    """A run's state, built from its events; rich renders it through ``__rich__``.

    ``handle`` is the run's event listener. Events arrive on the event loop while a live
    display renders from its own thread, so both hold the view's lock.
    """

    def __init__(self, plan: Plan, *, highlight: str = "classify",
                 inputs: dict[str, Any] | None = None) -> None:
        self.plan = plan
        self.highlight = highlight
        self.inputs = dict(inputs or {})
        stages = [n for n in plan.topological_order() if n.kind == "stage"]
        self.planned = {n.id: _planned_backend(n) for n in stages}  # node -> backend
        self.rows = {n.id: StageRow(n.id, self.planned[n.id]) for n in stages}
        self.classification: dict[str, Any] | None = None
        self.tools: list[ToolLine] = []
        self.branches: list[BranchLine] = []
        self.cache: list[CacheLine] = []
        self.result: RunResult | None = None
        self.started = time.perf_counter()
        self.duration_s: float | None = None  # set when the run ends
        self._lock = threading.Lock()

    # ---- events -------------------------------------------------------------------------
    def handle(self, event: RunEvent) -> None:
        with self._lock:
            self._apply(event)

    def _apply(self, event: RunEvent) -> None:
        data = event.data
        match event.kind:
            case "stage_start":
                self._row(event).state = "running"
            case "stage_end":
                self._stage_end(event)
            case "call":
                self._row(event).calls.append(data["call"])
            case "token":
                self._row(event).streamed += 1
            case "tool_call":
                self.tools.append(ToolLine(self._elapsed(), self._row(event).label,
                                           str(data["tool"]), str(data["arguments"]),
                                           str(data["result"])))
            case "branch":
                self.branches.append(self._branch(event.node or "", data["choice"]))
            case "cache":
                self.cache.append(_cache_line(data))
            case "run_end":
                self._run_end(data["result"])

    def _row(self, event: RunEvent) -> StageRow:
        node = event.node or ""
        item = event.data.get("item")
        label = node if item is None else f"{node}[{item}]"
        if label not in self.rows:
            if item is not None and node in self.rows and self.rows[node].state == "waiting":
                del self.rows[node]  # a stage inside a map: one row per item instead
            self.rows[label] = StageRow(label, self.planned.get(node, ""))
        return self.rows[label]

    def _stage_end(self, event: RunEvent) -> None:
        record: StageRecord = event.data["record"]
        row = self._row(event)
        row.state, row.calls = record.status, list(record.calls)
        if event.node == self.highlight and "output" in event.data:
            self.classification = _fields(event.data["output"])

    def _branch(self, node_id: str, choice: Any) -> BranchLine:
        node = self.plan.by_id().get(node_id)
        runs = [n.id for n in self.plan.nodes if n.kind == "stage" and any(
            c.branch == node_id and choice in c.choices for g in n.guards for c in g)]
        return BranchLine(node.label if node else node_id, choice, runs)

    def _run_end(self, result: RunResult) -> None:
        self.result, self.duration_s = result, self._elapsed()
        self.cache += [_cache_line(e) for e in result.cache_log if e.get("node") is None]

    def _elapsed(self) -> float:
        return time.perf_counter() - self.started

    # ---- rendering ----------------------------------------------------------------------
    def __rich__(self) -> RenderableType:
        with self._lock:
            return self.render(final=False)

    def render(self, *, final: bool = True) -> RenderableType:
        """The whole view; ``final`` shows every tool call and the run's outcome."""
        side = Columns([self._classification_table(), self._cache_table()], padding=(0, 4))
        parts: list[RenderableType] = [self._header(), self._stage_table(), side,
                                       self._tool_table(final), self._branch_text()]
        if final:
            parts.append(self._outcome())
        spaced: list[RenderableType] = []
        for part in parts:
            spaced += [part, Text("")]
        return Group(*spaced[:-1])

    def _header(self) -> Text:
        status = ("running" if self.result is None
                  else "ok" if self.result.ok else "FAILED")
        text = Text.assemble(("orla demo", "bold"), f" · {self.plan.name} · ",
                             (status, "bold"), f" · {self.duration_s or self._elapsed():.1f} s")
        for name, value in self.inputs.items():
            text.append(f"\n{name}: ", style="bold")
            text.append(_clip(str(value), 200))
        return text

    def _stage_table(self) -> Table:
        table = _table("stages", ["stage", "state", "backend"])
        for name in ("prompt", "compl.", "cached", "TTFT s", "wait s", "streamed"):
            table.add_column(name, justify="right", no_wrap=True)
        for row in self.rows.values():
            table.add_row(row.label, Text(row.state, STATE_STYLES[row.state]), row.backend,
                          *row.counters(), str(row.streamed) if row.streamed else "")
        return table

    def _classification_table(self) -> Table:
        table = _table(f"classification ({self.highlight})", ["field"], show_header=False)
        table.add_column("value", max_width=36)
        empty = {"status": "waiting" if self.result is None else "no output"}
        for name, value in (self.classification or empty).items():
            table.add_row(name, _clip(str(value), 120))
        return table

    def _cache_table(self) -> Table:
        table = _table("cache decisions", ["node", "backend", "decision"])
        table.add_column("action")
        for line in self.cache:
            table.add_row(line.node, line.backend, line.decision, line.action)
        return table

    def _tool_table(self, final: bool) -> Table:
        lines = self.tools if final else self.tools[-LIVE_TOOL_LINES:]
        table = _table(f"tool calls ({len(self.tools)})", ["at s", "stage"])
        table.add_column("call")  # shrinks first; each call stays on one line
        for line in lines:
            call = f"{line.tool}({line.arguments}) -> {line.result}"
            table.add_row(f"{line.at_s:.2f}", line.stage,
                          Text(_clip(call, CLIP), no_wrap=True, overflow="ellipsis"))
        return table

    def _branch_text(self) -> Text:
        if not self.branches:
            return Text("branch: not taken yet", style="dim")
        return Text("\n".join(
            f"branch {b.branch} took {b.choice!r}"
            + (f" -> {', '.join(b.runs)}" if b.runs else "") for b in self.branches))

    def _outcome(self) -> Text:
        if self.result is None:
            return Text("the run did not finish", style="bold red")
        if self.result.error:
            return Text(f"error: {self.result.error}", style="bold red")
        return Text.assemble(("output: ", "bold"), str(self.result.output))


def show_run(plan: Plan, console: Console, *, highlight: str = "classify",
             **inputs: Any) -> RunResult:
    """Run ``plan`` with the view live on ``console`` (a terminal), then print the final
    tables; on anything else, print only the final tables."""
    view = DemoView(plan, highlight=highlight, inputs=inputs)
    if console.is_terminal:
        with Live(view, console=console, refresh_per_second=8, transient=True):
            result = asyncio.run(arun(plan, on_event=view.handle, **inputs))
    else:
        result = asyncio.run(arun(plan, on_event=view.handle, **inputs))
    console.print(view.render(final=True))
    return result


def _table(title: str, fixed: list[str], *, show_header: bool = True) -> Table:
    """A compact table whose first columns (``fixed``) are never wrapped or cut."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  show_header=show_header, pad_edge=False, padding=0, show_edge=False)
    for name in fixed:
        table.add_column(name, no_wrap=True, min_width=len(name))
    return table


def _planned_backend(node: Node) -> str:
    mapping = mapping_of(node)
    if mapping is None:
        return ""
    return "routed" if mapping.routed else str(mapping.backend)


def _cache_line(entry: Mapping[str, object]) -> CacheLine:
    return CacheLine(str(entry.get("node") or "(end of run)"), str(entry.get("backend") or ""),
                     str(entry.get("decision", "")), str(entry.get("action", "")))


def _fields(output: Any) -> dict[str, Any]:
    if isinstance(output, BaseModel):
        return output.model_dump()
    if isinstance(output, dict):
        return {str(k): v for k, v in output.items()}
    return {"output": output}


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
