"""Runtime overhead per stage: orla against LangGraph on a zero-latency backend.

    python -m benchmarks.overhead [--stages 20] [--repeat 150] [--backend both|sim|trivial]
                                  [--out DIR] [--profile]

An N-stage chain (each stage makes one model call on the output of the one before) runs
as an orla workflow and as the equivalent LangGraph ``StateGraph``, whose nodes make the
same call directly on the same backend object. The backend costs nothing: either orla's
simulator with the zero-cost ``instant`` profile on the real clock (it still tokenizes,
hashes prefix blocks and steps its batch loop, so a call takes real CPU time), or a
trivial in-process backend whose ``chat`` returns a fixed reply without awaiting anything.
Every request is the same ``ChatRequest`` in all measures, so what differs is the
framework around the calls. A bare loop of the N calls is the baseline.

Measures, interleaved run by run in one process (the order rotates every round):

- bare loop: ``for i in range(N): await backend.chat(request)``;
- LangGraph, async nodes: ``graph.ainvoke``;
- LangGraph, sync nodes: the node function runs in the loop's default thread pool (as
  LangGraph runs any sync node under ``ainvoke``) and waits on the loop for the call;
- orla.arun, async bodies: ``await orla.agenerate(...)`` in ``async def`` stages;
- orla.arun, sync bodies: ``orla.generate(...)`` in plain ``def`` stages, which orla runs
  on the loop's thread, each body in a greenlet that steps aside for its model calls;
- orla.run, sync bodies: the synchronous entry point, which starts an event loop for
  every run.

All orla measures share one ``BackendPool`` built with ``clients={name: backend}``.
Results go to ``<out>/overhead.json``, ``overhead.md`` and ``overhead.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import os
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

import orla_sdk as orla
from benchmarks.compile_speed import describe_machine
from orla_sdk.backends.base import Backend, ChatRequest, ChatResult
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.stage import Stage

DEFAULT_STAGES = 20
DEFAULT_REPEAT = 150
WARMUP_RUNS = 5
DEFAULT_OUT = Path(__file__).parent / "results"
PROFILE_TOP = 25
PROFILE_RUNS = 100

BACKEND = "zero"
MODEL = "instant"
MAX_TOKENS = 8
LOGICAL = "fast"
INPUT = "the first draft"


# ---------------------------------------------------------------------------------
# The zero-latency backends
# ---------------------------------------------------------------------------------
class TrivialBackend:
    """Answers every request at once with a fixed reply; ``chat`` never yields."""

    def __init__(self) -> None:
        self.spec = orla.backends.simulator(BACKEND, MODEL, clock="real")
        self.calls = 0
        self._reply = ChatResult(content="a short reply", tool_calls=[], finish_reason="stop",
                                 prompt_tokens=12, completion_tokens=3, cached_tokens=0,
                                 ttft_s=0.0, duration_s=0.0)

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.calls += 1
        return self._reply

    async def aclose(self) -> None:
        return None


def make_backend(kind: str) -> Backend:
    if kind == "sim":
        return SimEngine(MODEL, name=BACKEND, clock="real")
    return TrivialBackend()


BACKEND_TITLES = {
    "sim": 'SimEngine("instant", clock="real"): zero simulated cost, real tokenizing and '
           "batch stepping",
    "trivial": "trivial in-process backend: chat() returns a fixed reply at once",
}


def prompt(step: int, text: str) -> str:
    return f"Step {step}: improve this text: {text}"


def request(step: int, text: str) -> ChatRequest:
    """The request every measure sends: the one ``orla.agenerate`` builds for the stage."""
    return ChatRequest(model=MODEL, messages=[{"role": "user", "content": prompt(step, text)}],
                       params={"max_tokens": MAX_TOKENS}, schema_name="improve",
                       priority=50)


# ---------------------------------------------------------------------------------
# The chain, four ways
# ---------------------------------------------------------------------------------
@orla.stage(model=LOGICAL, name="improve")
async def improve_async(text: str, step: int) -> str:
    return await orla.agenerate(prompt(step, text), max_tokens=MAX_TOKENS)


@orla.stage(model=LOGICAL, name="improve")
def improve_sync(text: str, step: int) -> str:
    return orla.generate(prompt(step, text), max_tokens=MAX_TOKENS)


def orla_chain(stages: int, body: Stage[..., str]) -> orla.Plan:
    """An orla plan of ``stages`` calls of ``body``, each on the previous output."""

    def chain(text: str) -> str:
        for step in range(stages):
            text = body(text, step)
        return text

    chain.__name__ = chain.__qualname__ = f"chain_{'async' if body is improve_async else 'sync'}"
    workflow = orla.workflow(
        backends=[orla.backends.simulator(BACKEND, MODEL, clock="real")],
        mapping={LOGICAL: orla.Target(backend=BACKEND, model=MODEL)})(chain)
    plan = orla.compile(workflow)
    assert len(plan.stage_nodes()) == stages
    return plan


class ChainState(TypedDict):
    text: str


def langgraph_chain(stages: int, backend: Backend, *, sync_nodes: bool,
                    loop_box: list[asyncio.AbstractEventLoop]) -> Any:
    """The same chain as a LangGraph StateGraph; each node calls the backend directly."""

    def async_node(step: int) -> Callable[[ChainState], Awaitable[ChainState]]:
        async def node(state: ChainState) -> ChainState:
            result = await backend.chat(request(step, state["text"]))
            return {"text": result.content}
        return node

    def sync_node(step: int) -> Callable[[ChainState], ChainState]:
        def node(state: ChainState) -> ChainState:  # runs in a worker thread
            future = asyncio.run_coroutine_threadsafe(
                backend.chat(request(step, state["text"])), loop_box[0])
            return {"text": future.result().content}
        return node

    graph = StateGraph(ChainState)
    previous = START
    for step in range(stages):
        name = f"improve_{step}"
        graph.add_node(name, sync_node(step) if sync_nodes else async_node(step))
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile()


async def bare_chain(stages: int, backend: Backend) -> str:
    text = INPUT
    for step in range(stages):
        text = (await backend.chat(request(step, text))).content
    return text


# ---------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------
BARE = "bare loop (baseline)"
LG_ASYNC = "LangGraph ainvoke, async nodes"
LG_SYNC = "LangGraph ainvoke, sync nodes (thread)"
ORLA_ASYNC = "orla.arun, async bodies"
ORLA_SYNC = "orla.arun, sync bodies"
ORLA_RUN = "orla.run, sync bodies (new loop per run)"
MEASURES = [BARE, LG_ASYNC, LG_SYNC, ORLA_ASYNC, ORLA_SYNC, ORLA_RUN]
# (numerator, denominator) pairs reported as ratios besides each measure / bare
RATIOS = [(ORLA_ASYNC, LG_ASYNC), (ORLA_SYNC, LG_SYNC), (ORLA_SYNC, ORLA_ASYNC),
          (ORLA_RUN, ORLA_SYNC)]


@dataclass
class Row:
    measure: str
    runs: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    per_stage_us: float
    overhead_per_stage_us: float = 0.0  # median per stage above the bare loop's
    vs_bare: float = 1.0


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Bench:
    """Every measure of one backend, ready to time one run at a time."""

    def __init__(self, stages: int, backend_kind: str, runner: asyncio.Runner) -> None:
        self.stages = stages
        self.kind = backend_kind
        self.runner = runner
        self.backend = make_backend(backend_kind)
        self.loop_box: list[asyncio.AbstractEventLoop] = [runner.get_loop()]
        self.plans = {ORLA_ASYNC: orla_chain(stages, improve_async),
                      ORLA_SYNC: orla_chain(stages, improve_sync)}
        self.graphs = {
            LG_ASYNC: langgraph_chain(stages, self.backend, sync_nodes=False,
                                      loop_box=self.loop_box),
            LG_SYNC: langgraph_chain(stages, self.backend, sync_nodes=True,
                                     loop_box=self.loop_box)}
        self.graph_config = {"recursion_limit": stages + 10}
        self.pool = orla.BackendPool(self.plans[ORLA_ASYNC].backends,
                                     clients={BACKEND: self.backend})
        runner.run(self.pool.start())
        self.samples: dict[str, list[float]] = {m: [] for m in MEASURES}
        self.outputs: dict[str, str] = {}

    async def _once(self, measure: str) -> str:
        if measure == BARE:
            return await bare_chain(self.stages, self.backend)
        if measure in self.graphs:
            state = await self.graphs[measure].ainvoke({"text": INPUT}, self.graph_config)
            return str(state["text"])
        result = await orla.arun(self.plans[measure], pool=self.pool, text=INPUT)
        return str(result.raise_for_error().output)

    async def _timed(self, measure: str) -> tuple[float, str]:
        start = time.perf_counter()
        output = await self._once(measure)
        return time.perf_counter() - start, output

    def one(self, measure: str) -> tuple[float, str]:
        """Seconds for one run of ``measure``, and its output."""
        if measure == ORLA_RUN:  # the sync entry point, outside any running loop
            start = time.perf_counter()
            result = orla.run(self.plans[ORLA_SYNC], pool=self.pool, text=INPUT)
            elapsed = time.perf_counter() - start
            return elapsed, str(result.raise_for_error().output)
        return self.runner.run(self._timed(measure))

    def record(self, measure: str) -> None:
        gc.collect()
        elapsed, output = self.one(measure)
        self.samples[measure].append(elapsed)
        previous = self.outputs.setdefault(measure, output)
        if output != previous:
            raise AssertionError(f"{measure}: runs gave different outputs")

    def warm_up(self) -> None:
        for _ in range(WARMUP_RUNS):
            for measure in MEASURES:
                self.one(measure)

    def run(self, repeat: int) -> None:
        self.warm_up()
        for round_number in range(repeat):
            shift = round_number % len(MEASURES)
            for measure in MEASURES[shift:] + MEASURES[:shift]:
                self.record(measure)
        outputs = set(self.outputs.values())
        if len(outputs) != 1:
            raise AssertionError(f"the measures disagree on the chain's output: {self.outputs}")

    def rows(self) -> list[Row]:
        rows = []
        for measure in MEASURES:
            ms = [s * 1000 for s in self.samples[measure]]
            median = statistics.median(ms)
            rows.append(Row(measure, len(ms), median, percentile(ms, 0.1),
                            percentile(ms, 0.9), min(ms), median * 1000 / self.stages))
        bare = rows[0]
        for row in rows:
            row.vs_bare = row.median_ms / bare.median_ms
            row.overhead_per_stage_us = row.per_stage_us - bare.per_stage_us
        return rows

    def close(self) -> None:
        self.runner.run(self.pool.aclose())


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    by_name = {row.measure: row for row in rows}
    found = []
    for top, bottom in RATIOS:
        a, b = by_name[top], by_name[bottom]
        found.append({"measure": top, "against": bottom, "time_ratio": a.median_ms / b.median_ms,
                      "overhead_ratio": (a.overhead_per_stage_us / b.overhead_per_stage_us
                                         if b.overhead_per_stage_us > 0 else None)})
    return found


# ---------------------------------------------------------------------------------
# Profiling
# ---------------------------------------------------------------------------------
def profile(bench: Bench, measure: str, out: Path) -> str:
    """cProfile ``PROFILE_RUNS`` runs of ``measure``; top functions by own and cumulative time."""
    profiler = cProfile.Profile()

    async def many() -> None:
        for _ in range(PROFILE_RUNS):
            await bench._once(measure)

    profiler.enable()
    bench.runner.run(many())
    profiler.disable()
    text = io.StringIO()
    text.write(f"{PROFILE_RUNS} runs of {measure!r}, {bench.stages} stages, backend "
               f"{bench.kind}\n")
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(PROFILE_TOP)
    stats.sort_stats("cumulative").print_stats(PROFILE_TOP)
    slug = "async" if measure == ORLA_ASYNC else "sync"
    (out / f"overhead_profile_{bench.kind}_{slug}.txt").write_text(text.getvalue(),
                                                                   encoding="utf-8")
    return text.getvalue()


# ---------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    info = describe_machine()
    info["threads_default_pool"] = min(32, (os.cpu_count() or 1) + 4)
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def table_lines(rows: list[Row]) -> list[str]:
    lines = ["| measure | median ms / run | p10 / p90 ms | median µs / stage | "
             "above bare µs / stage | / bare |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.measure} | {r.median_ms:.3f} | {r.p10_ms:.3f} / {r.p90_ms:.3f} | "
                     f"{r.per_stage_us:.1f} | {r.overhead_per_stage_us:.1f} | "
                     f"{r.vs_bare:.2f}x |")
    return lines


def ratio_lines(found: list[dict[str, Any]]) -> list[str]:
    lines = ["| ratio | run time | overhead above bare |", "|---|---:|---:|"]
    for f in found:
        over = "" if f["overhead_ratio"] is None else f"{f['overhead_ratio']:.2f}x"
        lines.append(f"| {f['measure']} / {f['against']} | {f['time_ratio']:.2f}x | {over} |")
    return lines


def report_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    lines = [
        "## Runtime overhead per stage: orla vs LangGraph",
        "",
        f"Machine: {m['platform']}; {m['cpu']}, {m['cores']} cores; {m['python']}; "
        f"orla {m['orla']}; langgraph {report['langgraph']}; load average at start "
        f"{' '.join(map(str, m['load_average']))}.",
        f"Chain of {report['stages']} stages, one model call each; {report['repeat']} timed "
        f"runs per measure (after {WARMUP_RUNS} warm-up rounds), interleaved, order rotating "
        f"each round; {report['timestamp']}.",
        "",
    ]
    for result in report["backends"]:
        rows = [Row(**r) for r in result["rows"]]
        lines += [f"### Backend: {BACKEND_TITLES[result['backend']]}", "",
                  *table_lines(rows), "", *ratio_lines(result["ratios"]),
                  ""]
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["backends"]
    figure, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.2),
                                squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        rows = [Row(**r) for r in result["rows"]]
        names = [r.measure for r in rows]
        medians = [r.per_stage_us for r in rows]
        low = [r.per_stage_us - r.p10_ms * 1000 / report["stages"] for r in rows]
        high = [r.p90_ms * 1000 / report["stages"] - r.per_stage_us for r in rows]
        colors = ["#888888", "#4c72b0", "#8fa8d6", "#dd8452", "#f0b27a", "#c44e52"]
        ax.barh(range(len(rows)), medians, xerr=[low, high], color=colors[:len(rows)],
                capsize=3)
        ax.set_yticks(range(len(rows)), names, fontsize=8)
        ax.invert_yaxis()
        for i, value in enumerate(medians):
            ax.text(value + high[i], i, f"  {value:.0f}", va="center", ha="left", fontsize=8)
        ax.set_xlim(0, max(m + h for m, h in zip(medians, high, strict=True)) * 1.15)
        ax.set_xlabel("µs per stage (median; bars p10 to p90)")
        ax.set_title(result["backend"] + " backend", fontsize=10)
    figure.suptitle(f"{report['stages']}-stage chain on a zero-latency backend "
                    f"({report['machine']['cores']} cores)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "overhead.md").write_text("\n".join(report_lines(report)) + "\n", encoding="utf-8")
    plot(report, out / "overhead.png")


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=DEFAULT_STAGES,
                        help=f"stages in the chain (default {DEFAULT_STAGES})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"timed runs per measure and backend (default {DEFAULT_REPEAT})")
    parser.add_argument("--backend", choices=["both", "sim", "trivial"], default="both",
                        help="the zero-latency backend (default both, one after the other)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the results (default benchmarks/results/)")
    parser.add_argument("--profile", action="store_true",
                        help=f"also cProfile {PROFILE_RUNS} runs of each orla measure")
    args = parser.parse_args(argv)
    if args.stages < 1 or args.repeat < 1:
        parser.error("--stages and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    import langgraph.version

    args = parse_args(argv)
    kinds = ["sim", "trivial"] if args.backend == "both" else [args.backend]
    report: dict[str, Any] = {
        "machine": machine(), "langgraph": langgraph.version.__version__,
        "stages": args.stages, "repeat": args.repeat,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"), "backends": []}
    profiles = []
    started = time.perf_counter()
    for kind in kinds:
        with asyncio.Runner() as runner:
            bench = Bench(args.stages, kind, runner)
            try:
                bench.run(args.repeat)
                if args.profile:
                    args.out.mkdir(parents=True, exist_ok=True)
                    profiles += [profile(bench, m, args.out) for m in (ORLA_ASYNC, ORLA_SYNC)]
            finally:
                bench.close()
        rows = bench.rows()
        report["backends"].append({"backend": kind, "title": BACKEND_TITLES[kind],
                                   "rows": [asdict(r) for r in rows],
                                   "ratios": ratios(rows),
                                   "samples_ms": {m: [round(x * 1000, 4) for x in xs]
                                                  for m, xs in bench.samples.items()}})
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print("\n".join(report_lines(report)))
    write_results(report, args.out)
    print(f"Results written to {args.out / 'overhead.json'}, .md and .png "
          f"({report['wall_s']} s)")
    for text in profiles:
        print(text)


if __name__ == "__main__":
    main()
