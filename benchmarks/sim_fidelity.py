"""The simulator's SmolLM2 profile against the real engine, call by call, on two small
workloads: a SWE-bench Lite slice and the DAG-MATH workflow.

    nice -n 10 python -m benchmarks.sim_fidelity          # both workloads, ~2 min
    nice -n 10 python -m benchmarks.sim_fidelity --fit    # refit the one-thread profile, ~3 min

The real engine is the embedded llama.cpp server as the runtime starts it (4 slots of
4,096 tokens), with one thread. The same orla plans run on it and, with the backend
swapped for the simulator (``--profile``, virtual clock), on the simulator:

- **SWE-bench Lite slice**: ``--lite`` issues (cut to 1,200 characters), one request each
  asking for a unified diff, all submitted at once (4 decode together), replies of
  ``LITE_TOKENS`` tokens (``ignore_eos``, so both engines write as many);
- **DAG-MATH**: ``examples/dag_math.py`` on ``--dag-problems`` problems under both memory
  policies of ``benchmarks/dag_math_cache.py`` (flush per request, workflow preserve).

For every call it reports the real and simulated time to first token and end-to-end
time, and the simulator's error (simulated / real - 1); then the error of each workload's
mean figures. Writes ``fidelity.{md,json}`` to ``--out`` (default
``benchmarks/results/paper``).

``--fit`` runs ``benchmarks.sim_fit``'s measurements (prefill and decode points, fastest
of three) on the one-thread engine and prints the fitted profile numbers, which
``orla_sdk/backends/sim/profiles.py`` holds as ``smollm2-135m-1t``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orla_sdk as orla
from benchmarks.compile_speed import describe_machine
from benchmarks.dag_math_cache import flush_every_stage, problems
from benchmarks.dag_math_cache import plans as real_dag_plans
from benchmarks.sim_fit import (
    DECODE_CASES,
    PREFILL_SENTENCES,
    complete,
    fit,
    measure_decode,
    measure_prefill,
    profile_numbers,
)
from benchmarks.sim_fit import table as fit_table
from examples.dag_math import dag_math
from orla_sdk.backends.engine import EngineConfig, LocalEngine
from orla_sdk.ir import BackendSpec, Plan

DEFAULT_OUT = Path(__file__).parent / "results" / "paper"
ENGINE = EngineConfig(slots=4, ctx_per_slot=4096, threads=1)
LITE_TOKENS = 48
ISSUE_CHARS = 1200
FIX_SYSTEM = ("You are a software engineer. Read the bug report and answer with only a minimal "
              "unified diff that fixes it.")
DAG_POLICIES = ("flush per request", "workflow preserve")
TOLERANCE = 0.20


@orla.stage(model="coder")
async def propose_fix(issue: str) -> str:
    return await orla.agenerate(f"## Bug Report\n\n{issue}", system=FIX_SYSTEM,
                                max_tokens=LITE_TOKENS, ignore_eos=True, temperature=0)


@orla.workflow
def single_shot(issue: str) -> str:
    return propose_fix(issue)


def lite_plan(backend: BackendSpec, model: str) -> Plan:
    return orla.compile(single_shot, backends=[backend],
                        mapping={"coder": f"{backend.name}/{model}"})


def sim_dag_plans(backend: BackendSpec, model: str) -> dict[str, Plan]:
    target = f"{backend.name}/{model}"
    return {DAG_POLICIES[0]: orla.compile(dag_math, backends=[backend], mapping={"math": target},
                                          passes=[*orla.passes.DEFAULT_PASSES,
                                                  flush_every_stage]),
            DAG_POLICIES[1]: orla.compile(dag_math, backends=[backend], mapping={"math": target})}


# ---- running the workloads ----------------------------------------------------------------
def call_rows(workload: str, key: str, result: orla.runtime.RunResult) -> list[dict[str, Any]]:
    return [{"workload": workload, "call": f"{key}/{s.node}", "prompt_tokens": c.prompt_tokens,
             "cached_tokens": c.cached_tokens, "ttft_s": c.ttft_s, "duration_s": c.duration_s}
            for s in result.stages for c in s.calls]


async def run_lite(plan: Plan, issues: list[str]) -> list[dict[str, Any]]:
    async with orla.BackendPool(plan.backends) as pool:
        results = await asyncio.gather(*(orla.arun(plan, pool=pool, issue=issue)
                                         for issue in issues))
    rows = []
    for number, result in enumerate(results):
        result.raise_for_error()
        rows += call_rows("SWE-bench Lite slice", f"issue {number}", result)
    return rows


async def run_dag(compiled: dict[str, Plan], texts: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with orla.BackendPool(compiled[DAG_POLICIES[0]].backends) as pool:
        for number, text in enumerate(texts):
            for policy in DAG_POLICIES:
                result = await orla.arun(compiled[policy], pool=pool, problem=text)
                result.raise_for_error()
                rows += call_rows(f"DAG-MATH, {policy}", f"problem {number}", result)
    return rows


def run_workloads(lite: Plan, dag: dict[str, Plan], issues: list[str],
                  texts: list[str]) -> list[dict[str, Any]]:
    return asyncio.run(run_lite(lite, issues)) + asyncio.run(run_dag(dag, texts))


def on_real_engine(issues: list[str], texts: list[str]) -> list[dict[str, Any]]:
    with LocalEngine(ENGINE) as engine:
        backend = orla.backends.llamacpp("local", url=engine.url)
        return run_workloads(lite_plan(backend, orla.backends.DEFAULT_LOCAL_MODEL),
                             real_dag_plans(engine.url), issues, texts)


def on_simulator(profile: str, issues: list[str], texts: list[str]) -> list[dict[str, Any]]:
    backend = orla.backends.simulator("local", profile, clock="virtual")
    return run_workloads(lite_plan(backend, profile), sim_dag_plans(backend, profile), issues,
                         texts)


# ---- comparing ----------------------------------------------------------------------------
def pair(real: list[dict[str, Any]], simulated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_call = {(r["workload"], r["call"]): r for r in simulated}
    pairs = []
    for r in real:
        s = by_call[(r["workload"], r["call"])]
        pairs.append({"workload": r["workload"], "call": r["call"],
                      "real_prompt_tokens": r["prompt_tokens"],
                      "sim_prompt_tokens": s["prompt_tokens"],
                      "real_cached": r["cached_tokens"], "sim_cached": s["cached_tokens"],
                      "real_ttft_s": r["ttft_s"], "sim_ttft_s": s["ttft_s"],
                      "real_duration_s": r["duration_s"], "sim_duration_s": s["duration_s"]})
    return pairs


def error(simulated: float, real: float) -> float:
    return simulated / real - 1


def per_token(mine: list[dict[str, Any]], side: str) -> float:
    """Seconds to first token per prompt token computed (cached ones excluded): the cost
    model's figure, free of the two tokenizers' different counts."""
    computed = sum(p[f"{side}_prompt_tokens"] - p[f"{side}_cached"] for p in mine)
    return float(sum(p[f"{side}_ttft_s"] for p in mine)) / max(computed, 1)


def figures(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workload: the mean TTFT and end-to-end time, real and simulated, the spread of
    the per-call errors, and the prompt tokens and TTFT per computed token."""
    out = []
    for workload in dict.fromkeys(p["workload"] for p in pairs):
        mine = [p for p in pairs if p["workload"] == workload]
        row: dict[str, Any] = {"workload": workload, "calls": len(mine)}
        row["prompt_tokens"] = {side: statistics.fmean(p[f"{side}_prompt_tokens"] for p in mine)
                                for side in ("real", "sim")}
        row["ttft_per_token"] = {side: per_token(mine, side) for side in ("real", "sim")}
        for what in ("ttft_s", "duration_s"):
            real = statistics.fmean(p[f"real_{what}"] for p in mine)
            sim = statistics.fmean(p[f"sim_{what}"] for p in mine)
            errors = sorted(abs(error(p[f"sim_{what}"], p[f"real_{what}"])) for p in mine)
            row[what] = {"real": real, "sim": sim, "error": error(sim, real),
                         "median_abs_call_error": statistics.median(errors),
                         "calls_within": sum(e <= TOLERANCE for e in errors) / len(errors)}
        out.append(row)
    return out


def figures_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| workload | calls | mean TTFT real | simulated | error | per-call median abs "
             "error | calls within 20% | mean end-to-end real | simulated | error | per-call "
             "median abs error | calls within 20% |", "|---|---:|" + "---:|" * 10]
    for r in rows:
        cells = []
        for what in ("ttft_s", "duration_s"):
            f = r[what]
            cells += [f"{f['real']:.3f} s", f"{f['sim']:.3f} s", f"{f['error']:+.0%}",
                      f"{f['median_abs_call_error']:.0%}", f"{f['calls_within']:.0%}"]
        lines.append(f"| {r['workload']} | {r['calls']} | {' | '.join(cells)} |")
    lines += ["", "| workload | mean prompt tokens real | simulated | difference | TTFT per "
              "computed prompt token real | simulated | error |", "|---|---:|---:|---:|---:|"
              "---:|---:|"]
    for r in rows:
        tokens, cost = r["prompt_tokens"], r["ttft_per_token"]
        lines.append(f"| {r['workload']} | {tokens['real']:.0f} | {tokens['sim']:.0f} | "
                     f"{error(tokens['sim'], tokens['real']):+.0%} | {1e3 * cost['real']:.2f} ms"
                     f" | {1e3 * cost['sim']:.2f} ms | {error(cost['sim'], cost['real']):+.0%} |")
    return lines


def calls_table(pairs: list[dict[str, Any]]) -> list[str]:
    lines = ["| workload | call | prompt tokens real / sim | cached real / sim | TTFT real | sim "
             "| error | end-to-end real | sim | error |", "|---|---|---:|---:|" + "---:|" * 6]
    for p in pairs:
        lines.append(
            f"| {p['workload']} | {p['call']} | {p['real_prompt_tokens']} / "
            f"{p['sim_prompt_tokens']} | {p['real_cached']} / {p['sim_cached']} | "
            f"{p['real_ttft_s']:.3f} | {p['sim_ttft_s']:.3f} | "
            f"{error(p['sim_ttft_s'], p['real_ttft_s']):+.0%} | {p['real_duration_s']:.3f} | "
            f"{p['sim_duration_s']:.3f} | "
            f"{error(p['sim_duration_s'], p['real_duration_s']):+.0%} |")
    return lines


# ---- the one-thread fit -------------------------------------------------------------------
def refit(repeat: int) -> list[str]:
    with LocalEngine(ENGINE) as engine:
        complete(engine.url, "Warm up.", slot=0, max_tokens=4)
        prefill = [measure_prefill(engine.url, s, repeat) for s in PREFILL_SENTENCES]
        decode = [measure_decode(engine.url, s, n, b, repeat) for s, n, b in DECODE_CASES]
    numbers = profile_numbers(fit(prefill), fit(decode))
    return [*fit_table(prefill + decode), "", "Fitted profile numbers (one thread):", "",
            *[f"- `{name}` = {value:.6g}" for name, value in numbers.items()]]


def timed(what: str, work: Callable[[], Any]) -> Any:
    began = time.perf_counter()
    value = work()
    print(f"{what}: {time.perf_counter() - began:.0f} s", flush=True)
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lite", type=int, default=8, help="SWE-bench Lite issues")
    parser.add_argument("--dag-problems", type=int, default=1)
    parser.add_argument("--profile", default="smollm2-135m-1t")
    parser.add_argument("--also", default="smollm2-135m",
                        help="a second profile to compare (the two-thread fit)")
    parser.add_argument("--fit", action="store_true", help="refit the one-thread profile")
    parser.add_argument("--repeat", type=int, default=3, help="runs per point with --fit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    header = [f"Machine: {machine['platform']}; {machine['cpu']}, {machine['cores']} cores; "
              f"{machine['python']}; orla {machine['orla']}",
              f"Engine: llama.cpp, {ENGINE.slots} slots x {ENGINE.ctx_per_slot} tokens, "
              f"{ENGINE.threads} thread", ""]
    if args.fit:
        lines = header + timed("fit", lambda: refit(args.repeat))
        (args.out / "fidelity_fit.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    issues = [text[:ISSUE_CHARS] for text in problems(args.lite)]
    texts = problems(args.dag_problems)
    real = timed("real engine", lambda: on_real_engine(issues, texts))
    report: dict[str, Any] = {"machine": machine, "profiles": {}}
    lines = list(header)
    for profile in dict.fromkeys([args.profile, args.also]):
        pairs = pair(real, on_simulator(profile, issues, texts))
        rows = figures(pairs)
        report["profiles"][profile] = {"figures": rows, "calls": pairs}
        lines += [f"## Profile `{profile}`", "", *figures_table(rows), ""]
        if profile == args.profile:
            lines += ["Every call:", "", *calls_table(pairs), ""]
    (args.out / "fidelity.md").write_text("\n".join(lines) + "\n")
    (args.out / "fidelity.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}/fidelity.md and .json")


if __name__ == "__main__":
    main()
