"""Compile speed: how long ``orla.compile`` takes on a long workflow and on a branchy one.

    python -m benchmarks.compile_speed [--repeat N] [--out DIR] [--profile]

Workloads (both defined below):

- ``long_pipeline``: 1,000 stage calls made in a loop. Each stage consumes the previous
  output, some also an output from a few steps back, and the steps cycle through three
  logical models on two backends, so cache-preserve spans form and break.
- ``six_branches``: six independent typed branches, on a bool field of one stage's output
  or on a bool output of another, each side calling a stage: 2**6 = 64 paths.

For each workload the benchmark times the full ``orla.compile`` (trace, configure and all
default passes), the trace alone, and each default pass run in pipeline order on a traced
and configured plan. Every figure is also given as a ratio to the baseline, measured in
the same process: the same workflow called as plain Python, where each stage body returns
a constant. Results go to ``<out>/compile_speed.json`` and ``<out>/compile_speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import orla_sdk as orla
from orla_sdk.workflow import Workflow

DEFAULT_REPEAT = 15
DEFAULT_OUT = Path(__file__).parent / "results"
PROFILE_TOP = 20
COMPILE_MEASURE = "compile (trace + all passes)"

# ---------------------------------------------------------------------------------
# Backends and mapping shared by both workloads
# ---------------------------------------------------------------------------------
LOCAL_MODEL = orla.backends.DEFAULT_LOCAL_MODEL
CODE_MODEL = "qwen2.5-coder-1.5b-instruct"
BACKENDS = [
    orla.backends.llamacpp("edge"),
    orla.backends.llamacpp("datacenter", models=[LOCAL_MODEL, CODE_MODEL]),
]
MAPPING = {
    "light": orla.Target(backend="edge", model=LOCAL_MODEL),
    "heavy": orla.Target(backend="datacenter", model=LOCAL_MODEL),
    "code": orla.Target(backend="datacenter", model=CODE_MODEL),
}


# ---------------------------------------------------------------------------------
# Workload (a): a 1,000-stage pipeline
# ---------------------------------------------------------------------------------
STAGE_COUNT = 1000
SKIP_BACK = 4
# One round of steps; the workflow repeats it. Runs of the same model make preserve
# spans; every change of model breaks one.
ROUND = ("extract", "extract", "extract", "reason", "reason", "reason", "verify", "combine",
         "extract", "reason")


@orla.stage(model="light")
def extract(text: str) -> str:
    return "facts"


@orla.stage(model="heavy")
def reason(facts: str, context: str) -> str:
    return "argument"


@orla.stage(model="code")
def verify(argument: str) -> str:
    return "verdict"


@orla.stage(model="heavy")
def combine(latest: str, earlier: str) -> str:
    return "notes"


@orla.workflow(backends=BACKENDS, mapping=MAPPING)
def long_pipeline(document: str) -> str:
    outputs = [document]
    for step in range(STAGE_COUNT):
        kind = ROUND[step % len(ROUND)]
        latest = outputs[-1]
        earlier = outputs[max(0, len(outputs) - SKIP_BACK)]
        if kind == "extract":
            outputs.append(extract(latest))
        elif kind == "reason":
            outputs.append(reason(latest, earlier))
        elif kind == "verify":
            outputs.append(verify(latest))
        else:
            outputs.append(combine(latest, earlier))
    return outputs[-1]


# ---------------------------------------------------------------------------------
# Workload (b): six independent typed branches, 64 paths
# ---------------------------------------------------------------------------------
BRANCH_COUNT = 6


class Review(BaseModel):
    approved: bool
    notes: str


APPROVED = Review(approved=True, notes="fine")


@orla.stage(model="light")
def review(ticket: str) -> Review:
    return APPROVED


@orla.stage(model="light")
def is_urgent(ticket: str) -> bool:
    return True


@orla.stage(model="heavy")
def escalate(ticket: str) -> str:
    return "escalated"


@orla.stage(model="light")
def answer(ticket: str) -> str:
    return "answered"


@orla.stage(model="heavy")
def summarize(replies: list[str]) -> str:
    return "summary"


@orla.workflow(backends=BACKENDS, mapping=MAPPING)
def six_branches(ticket: str) -> str:
    replies = []
    for branch in range(BRANCH_COUNT):
        # Even branches test a bool field of a model output, odd ones a bool output.
        needs_escalation = review(ticket).approved if branch % 2 == 0 else is_urgent(ticket)
        if needs_escalation:
            replies.append(escalate(ticket))
        else:
            replies.append(answer(ticket))
    return summarize(replies)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    workflow: Workflow[..., Any]
    inputs: dict[str, Any]
    target_ms: float


WORKLOADS = [
    Workload("long_pipeline", f"{STAGE_COUNT} stages in a loop, 3 logical models",
             long_pipeline, {"document": "a long report"}, target_ms=200.0),
    Workload("six_branches",
             f"{BRANCH_COUNT} independent typed branches, {2 ** BRANCH_COUNT} paths",
             six_branches, {"ticket": "my card was charged twice"}, target_ms=1000.0),
]


# ---------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------
@dataclass
class Row:
    measure: str
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    vs_plain_call: float | None = None
    error: str | None = None


def milliseconds_per_call(run: Callable[[], object], repeat: int,
                          number: int = 1) -> list[float]:
    """One sample per repeat: the mean time of ``number`` back-to-back calls of ``run``."""
    samples = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for _ in range(number):
            run()
        samples.append((time.perf_counter() - start) * 1000 / number)
    return samples


def calls_per_sample(run: Callable[[], object], min_ms: float = 5.0) -> int:
    """How many calls of a fast ``run`` one sample needs to last at least ``min_ms``."""
    number = 1
    while True:
        elapsed = milliseconds_per_call(run, repeat=1, number=number)[0] * number
        if elapsed >= min_ms:
            return number
        number *= 2


def p90(samples: list[float]) -> float:
    """The 90th percentile, nearest-rank."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def summarize_samples(measure: str, samples: list[float]) -> Row:
    return Row(measure, statistics.median(samples), p90(samples), min(samples))


def describe_error(exc: BaseException) -> str:
    """The exception and the innermost orla_sdk line it came from."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "orla_sdk" in f.filename]
    message = str(exc).splitlines()[0] if str(exc) else ""
    where = ""
    if frames:
        last = frames[-1]
        path = last.filename[last.filename.rindex("orla_sdk"):]
        where = f" at {path}:{last.lineno} in {last.name}()"
    return f"{type(exc).__name__}: {message}{where}"


def timed_row(measure: str, collect: Callable[[], list[float]]) -> Row:
    """Time a measure; a measure that raises is reported as failed, not timed."""
    try:
        return summarize_samples(measure, collect())
    except Exception as exc:
        return Row(measure, error=describe_error(exc))


def pass_rows(workflow: Workflow[..., Any], repeat: int) -> list[Row]:
    """Each default pass, timed in pipeline order on a freshly traced and configured plan.

    A pass that raises is reported as failed; the later passes still run on the plan.
    """
    samples: dict[str, list[float]] = {p.__name__: [] for p in orla.passes.DEFAULT_PASSES}
    errors: dict[str, str] = {}
    for _ in range(repeat):
        plan = orla.compile(workflow, passes=[])
        for run_pass in orla.passes.DEFAULT_PASSES:
            name = run_pass.__name__
            if name in errors:
                continue
            gc.collect()
            start = time.perf_counter()
            try:
                plan = run_pass(plan)
            except Exception as exc:
                errors[name] = describe_error(exc)
                continue
            samples[name].append((time.perf_counter() - start) * 1000)
    return [Row(f"pass {name}", error=errors[name]) if name in errors
            else summarize_samples(f"pass {name}", times) for name, times in samples.items()]


def warm_up(*runs: Callable[[], object]) -> None:
    """Run each once untimed (imports, caches, first-call costs); failures show up later."""
    for run in runs:
        with contextlib.suppress(Exception):
            run()


def measure_workload(workload: Workload, repeat: int) -> list[Row]:
    def plain_call() -> object:
        return workload.workflow(**workload.inputs)

    def compile_plan() -> object:
        return orla.compile(workload.workflow)

    def trace_plan() -> object:
        return orla.trace(workload.workflow)

    warm_up(plain_call, compile_plan, trace_plan)
    number = calls_per_sample(plain_call)
    rows = [
        summarize_samples("plain call (baseline)",
                          milliseconds_per_call(plain_call, repeat, number)),
        timed_row(COMPILE_MEASURE, lambda: milliseconds_per_call(compile_plan, repeat)),
        timed_row("trace alone", lambda: milliseconds_per_call(trace_plan, repeat)),
        *pass_rows(workload.workflow, repeat),
    ]
    baseline = rows[0].median_ms
    for row in rows:
        if row.median_ms is not None and baseline:
            row.vs_plain_call = row.median_ms / baseline
    return rows


def plan_shape(workload: Workload) -> dict[str, int]:
    """Facts about the plan, to show the workload is what it claims to be.

    Only the passes that cache spans need run here, so the shape is known even when
    another pass fails on the workload.
    """
    plan = orla.compile(workload.workflow, passes=[orla.passes.map_stages,
                                                   orla.passes.cache_spans])
    return {"nodes": len(plan.nodes), "stage_nodes": len(plan.stage_nodes()),
            "paths": plan.paths, "cache_spans": len(plan.meta["cache_spans"])}


def verdict(rows: list[Row], target_ms: float) -> str:
    compile_row = next(r for r in rows if r.measure == COMPILE_MEASURE)
    if compile_row.median_ms is None:
        return "MISS (compile fails)"
    return "PASS" if compile_row.median_ms < target_ms else "MISS"


# ---------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "orla": orla.__version__,
    }


# ---------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------
def ms_text(milliseconds: float) -> str:
    """Three decimals, or five for sub-0.1 ms figures such as a plain call."""
    return f"{milliseconds:.3f}" if milliseconds >= 0.1 else f"{milliseconds:.5f}"


def ratio_text(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2f}x"


def table_lines(rows: list[Row]) -> list[str]:
    """A Markdown table; it also reads well on a terminal."""
    lines = ["| measure | median ms | p90 ms | min ms | / plain call |",
             "|---|---:|---:|---:|---:|"]
    return lines + [row_line(r) for r in rows]


def row_line(row: Row) -> str:
    if row.error is not None:
        return f"| {row.measure} | failed: {row.error} | | | |"
    times = [ms_text(t) for t in (row.median_ms, row.p90_ms, row.min_ms) if t is not None]
    return f"| {row.measure} | {' | '.join(times)} | {ratio_text(row.vs_plain_call)} |"


def workload_lines(result: dict[str, Any]) -> list[str]:
    shape = result["plan"]
    compile_row = next(Row(**r) for r in result["rows"] if r["measure"] == COMPILE_MEASURE)
    compile_text = ("fails" if compile_row.median_ms is None
                    else f"median {compile_row.median_ms:.1f} ms")
    return [
        f"### {result['name']}: {result['description']}",
        "",
        f"Plan: {shape['nodes']} nodes, {shape['stage_nodes']} stage nodes, "
        f"{shape['paths']} path(s), {shape['cache_spans']} cache span(s).",
        f"Target: compile under {result['target_ms']:.0f} ms; {compile_text}: "
        f"**{result['verdict']}**",
        "",
        *table_lines([Row(**row) for row in result["rows"]]),
        "",
    ]


def report_lines(report: dict[str, Any]) -> list[str]:
    machine = report["machine"]
    lines = [
        "## orla.compile speed",
        "",
        f"Machine: {machine['platform']}; {machine['cpu']}, {machine['cores']} cores; "
        f"{machine['python']}; orla {machine['orla']}.",
        f"Repeats: {report['repeat']} per measure after a warm-up run; {report['timestamp']}.",
        "",
    ]
    for result in report["workloads"]:
        lines += workload_lines(result)
    return lines


def write_results(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_speed.json").write_text(json.dumps(report, indent=2) + "\n",
                                            encoding="utf-8")
    (out / "compile_speed.md").write_text("\n".join(report_lines(report)), encoding="utf-8")


def compile_pass_by_pass(workflow: Workflow[..., Any]) -> None:
    """``orla.compile`` step by step; a pass that raises is skipped, as in the timings."""
    plan = orla.compile(workflow, passes=[])
    for run_pass in orla.passes.DEFAULT_PASSES:
        with contextlib.suppress(Exception):
            plan = run_pass(plan)


def profile_compile(workload: Workload, out: Path) -> str:
    """cProfile one compile: the top functions by own time and by cumulative time.

    The text is also saved under ``out``.
    """
    profiler = cProfile.Profile()
    profiler.runcall(compile_pass_by_pass, workload.workflow)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(PROFILE_TOP)
    stats.sort_stats("cumulative").print_stats(PROFILE_TOP)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compile_speed_profile_{workload.name}.txt").write_text(text.getvalue(),
                                                                     encoding="utf-8")
    return text.getvalue()


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------
def run(repeat: int) -> dict[str, Any]:
    results = []
    for workload in WORKLOADS:
        rows = measure_workload(workload, repeat)
        results.append({
            "name": workload.name, "description": workload.description,
            "plan": plan_shape(workload), "target_ms": workload.target_ms,
            "verdict": verdict(rows, workload.target_ms), "rows": [asdict(r) for r in rows],
        })
    return {"machine": describe_machine(), "repeat": repeat,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "workloads": results}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"timed runs per measure (default {DEFAULT_REPEAT})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the JSON and Markdown results "
                             "(default benchmarks/results/)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one compile of each workload and print the "
                             f"top {PROFILE_TOP} functions by own and by cumulative time")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args.repeat)
    print("\n".join(report_lines(report)))
    write_results(report, args.out)
    print(f"Results written to {args.out / 'compile_speed.json'} and .md")
    if args.profile:
        for workload in WORKLOADS:
            print(f"\n### profile: one compile of {workload.name}\n")
            print(profile_compile(workload, args.out))


if __name__ == "__main__":
    main()
