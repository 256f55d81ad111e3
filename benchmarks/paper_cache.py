"""The Orla paper's DAG-MATH cache experiment at paper scale, on the simulator, beside the
real llama.cpp run of ``benchmarks/dag_math_cache.py``.

    python -m benchmarks.paper_cache                  # 300 workflows per policy, ~1.5 min
    python -m benchmarks.paper_cache --problems 20    # a smoke run

The 31-stage reasoning DAG of ``examples/dag_math.py`` (same steps and dependencies) runs
as the released Orla evaluation runs it: Qwen3-8B on SGLang (here the simulator with the
``qwen3-8b-85pct`` profile: 85 % of an RTX PRO 6000 Blackwell Max-Q, SGLang's
``--mem-fraction-static``), one request at a time (the backend's queue limit is 1),
workflows one after another, every reply 256 tokens (the outputs' cap; the simulated
model always reaches it). Each step's prompt follows the released evaluation's layout:
its system prompt, the problem, the earlier steps it builds on, then the step. Two memory
policies, alternating problem by problem on one engine:

- **flush per request**: every stage's cache decision is "flush" (SGLang's
  ``/flush_cache`` after each call), so no call reuses another's KV cache;
- **flush per workflow**: the plan's cache spans keep the KV cache through the workflow
  and flush it at its end (orla's default).

Problems are the SWE-bench Lite issue texts of the real run, cut to 1,200 characters
(the DAG-MATH problems themselves are not in this repository). Writes
``cache.{json,md,csv}`` and ``cache_ttft_cdf.png`` (simulated and, when
``benchmarks/results/dag_math_cache.csv`` exists, the real llama.cpp run's TTFT CDFs in
one figure) to ``--out`` (default ``benchmarks/results/paper``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

import orla_sdk as orla
from benchmarks import dag_math_cache
from benchmarks.compile_speed import describe_machine
from benchmarks.dag_math_cache import PROBLEM_CHARS, flush_every_stage, problems
from examples.dag_math import DEPENDENCIES, FINAL_STEPS
from orla_sdk.ir import Plan, Scheduling

DEFAULT_OUT = Path(__file__).parent / "results" / "paper"
REAL_CSV = Path(__file__).parent / "results" / "dag_math_cache.csv"
PROFILE = "qwen3-8b-85pct"
STEP_TOKENS = 256
POLICIES = ("flush per request", "flush per workflow")
# The released evaluation's system prompt (examples/dag_math_eval/shared/shared.go in
# Orla's repository, MIT licence), verbatim.
SYSTEM_PROMPT = (
    "You are an expert mathematician solving a problem step by step. You are given a "
    "reasoning step from a mathematical proof or derivation. The step includes the logical "
    "inference (edge) and the conclusion (node). Your task is to verify and elaborate on "
    "this reasoning step, explaining why the conclusion follows from the premises.\n\n"
    "Rules:\n- Be concise but rigorous.\n- Show your work clearly.\n- If the step depends on "
    "previous conclusions, assume they are correct.")


def stage_prompt(problem: str, index: int, premises: list[str], sources: list[int]) -> str:
    """The released evaluation's layout: the problem (shared by every step), the steps
    this one builds on, then the step."""
    parts = [f"## Problem\n\n{problem}\n\n"]
    if premises:
        parts.append("## Previous Steps Referenced\n\n")
        parts += [f"**Step {s} result:** {p}\n\n" for s, p in zip(sources, premises,
                                                                  strict=True)]
    parts.append(f"## Current Step (step {index})\n\nState one new fact that follows from "
                 "the premises, and verify and elaborate on it.")
    return "".join(parts)


@orla.stage(model="math")
async def step(problem: str, index: int, premises: list[str]) -> str:
    prompt = stage_prompt(problem, index, premises, list(DEPENDENCIES[index]))
    return await orla.agenerate(prompt, system=SYSTEM_PROMPT, max_tokens=STEP_TOKENS,
                                ignore_eos=True, temperature=0)


@orla.stage(model="math")
async def answer(problem: str, conclusions: list[str]) -> str:
    prompt = stage_prompt(problem, len(DEPENDENCIES), conclusions, FINAL_STEPS)
    return await orla.agenerate(prompt + "\n\nState the final answer.", system=SYSTEM_PROMPT,
                                max_tokens=STEP_TOKENS, ignore_eos=True, temperature=0)


@orla.workflow
def dag_math_paper(problem: str) -> str:
    conclusions: list[str] = []
    for index, deps in enumerate(DEPENDENCIES):
        conclusions.append(step(problem, index, [conclusions[d] for d in deps]))
    return answer(problem, [conclusions[i] for i in FINAL_STEPS])


def plans() -> dict[str, Plan]:
    backend = orla.backends.simulator("sglang", PROFILE, clock="virtual").model_copy(
        update={"scheduling": Scheduling(limit=1)})  # the released run: one call at a time
    mapping = {"math": f"sglang/{PROFILE}"}
    return {
        POLICIES[0]: orla.compile(dag_math_paper, backends=[backend], mapping=mapping,
                                  passes=[*orla.passes.DEFAULT_PASSES, flush_every_stage]),
        POLICIES[1]: orla.compile(dag_math_paper, backends=[backend], mapping=mapping),
    }


async def measure(texts: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    compiled = plans()
    async with orla.BackendPool(compiled[POLICIES[0]].backends) as pool:
        for number, text in enumerate(texts):
            order = POLICIES if number % 2 == 0 else tuple(reversed(POLICIES))
            for policy in order:
                result = await orla.arun(compiled[policy], pool=pool, problem=text)
                rows += dag_math_cache.call_rows(policy, number, result.raise_for_error())
    return rows


def read_real(path: Path) -> list[dict[str, Any]]:
    """The real llama.cpp run's calls, as ``benchmarks.dag_math_cache`` wrote them."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [{**row, "ttft_s": float(row["ttft_s"]), "prompt_tokens": int(row["prompt_tokens"]),
                 "cached_tokens": int(row["cached_tokens"])} for row in csv.DictReader(handle)]


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``dag_math_cache``'s TTFT summary of each policy, with its mean prompt size."""
    table = dag_math_cache.summarize(rows)
    for policy, row in table.items():
        row["mean_prompt_tokens"] = statistics.fmean(
            r["prompt_tokens"] for r in rows if r["policy"] == policy)
    return table


def table_lines(runs: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = ["| run | policy | calls | mean prompt tokens | mean TTFT | median TTFT | p90 TTFT | "
             "cached prompt tokens |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for run, table in runs.items():
        lines += [f"| {run} | {policy} | {v['calls']:,.0f} | {v['mean_prompt_tokens']:,.0f} | "
                  f"{_seconds(v['mean_ttft_s'])} | {_seconds(v['median_ttft_s'])} | "
                  f"{_seconds(v['p90_ttft_s'])} | {v['cached_fraction']:.0%} |"
                  for policy, v in table.items()]
    lines.append("")
    for run, table in runs.items():
        flush, keep = (table[p] for p in (_flush(table), _keep(table)))
        lines.append(f"- {run}: flush per request / per workflow: mean TTFT "
                     f"{flush['mean_ttft_s'] / keep['mean_ttft_s']:.2f}x, median TTFT "
                     f"{flush['median_ttft_s'] / keep['median_ttft_s']:.2f}x")
    return lines


def _flush(table: dict[str, Any]) -> str:
    return next(p for p in table if "flush per request" in p)


def _keep(table: dict[str, Any]) -> str:
    return next(p for p in table if p != _flush(table))


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value >= 0.1 else f"{1e3 * value:.1f} ms"


def plot(simulated: list[dict[str, Any]], real: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    curves = [("simulated Qwen3-8B, SGLang, RTX PRO 6000", simulated, "-")]
    if real:
        curves.append(("real llama.cpp, SmolLM2-135M, CPU", real, "--"))
    for label, rows, style in curves:
        for policy, color in zip(sorted({r["policy"] for r in rows}), ("tab:red", "tab:blue"),
                                 strict=False):
            ttfts = sorted(r["ttft_s"] for r in rows if r["policy"] == policy)
            axes.step(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], where="post",
                      linestyle=style, color=color, label=f"{label}: {policy}")
    axes.set_xscale("log")
    axes.set_xlabel("time to first token (s, log scale)")
    axes.set_ylabel("fraction of calls")
    axes.set_title("DAG-MATH workflow: flush per request against per workflow")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--real", type=Path, default=REAL_CSV,
                        help="the CSV benchmarks.dag_math_cache wrote")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    simulated = asyncio.run(measure(problems(args.problems)))
    real = read_real(args.real)
    runs = {"simulated (Qwen3-8B, SGLang)": summarize(simulated)}
    if real:
        runs["real llama.cpp (SmolLM2-135M)"] = summarize(real)
    machine = describe_machine()
    text = "\n".join([
        f"Machine: {machine['platform']}; {machine['cpu']}, {machine['cores']} cores; "
        f"{machine['python']}; orla {machine['orla']}", "",
        f"{args.problems} problems (SWE-bench Lite issues cut to {PROBLEM_CHARS} characters), "
        f"31 calls each per policy; simulated profile {PROFILE}, replies of {STEP_TOKENS} "
        f"tokens; real run: {args.real if real else 'not found'}", "", *table_lines(runs)])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache.md").write_text(text + "\n")
    (args.out / "cache.json").write_text(json.dumps(
        {"machine": machine, "problems": args.problems, "runs": runs}, indent=2) + "\n")
    with open(args.out / "cache.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(simulated[0]))
        writer.writeheader()
        writer.writerows(simulated)
    plot(simulated, real, args.out / "cache_ttft_cdf.png")
    print(text)
    print(f"\nwrote {args.out}/cache.md, .json, .csv and _ttft_cdf.png in "
          f"{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
