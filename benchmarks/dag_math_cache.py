"""DAG-MATH-style cache experiment on the real llama.cpp engine.

The same 31-stage reasoning DAG (examples/dag_math.py) runs under two memory policies:

- flush per request: no request reuses the cache of another (``cache_prompt: false``
  on every request, and each stage's slot is erased when it finishes): what a
  request-level server gives a workflow;
- workflow-level preserve: the plan's cache spans keep the run's slot between stages
  that extend each other's context, and flush at the end.

Problem texts are the first SWE-bench Lite issue statements from benchmarks/data/swebench
(cut to about 1,200 characters), a realistic long prefix that every step repeats. Both
policies run on the same engine, alternating, in one process. The engine has one slot,
so the queue admits one request at a time and TTFT is prefill plus the first token,
with no queueing inside the engine.

    python -m benchmarks.dag_math_cache [--problems 3] [--threads N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import orla_sdk as orla
from examples.dag_math import dag_math
from orla_sdk.backends.engine import EngineConfig, LocalEngine
from orla_sdk.ir import Plan

DATA = Path(__file__).resolve().parent / "data" / "swebench" / "problems.jsonl.gz"
PROBLEM_CHARS = 1200


def problems(count: int) -> list[str]:
    texts = []
    with gzip.open(DATA, "rt", encoding="utf-8") as lines:
        for line in lines:
            instance = json.loads(line)
            if instance["in_lite"]:
                texts.append(instance["problem_statement"][:PROBLEM_CHARS])
            if len(texts) == count:
                break
    return texts


def flush_every_stage(plan: Plan) -> Plan:
    """The baseline: drop each stage's cache as soon as it is done."""
    for node in plan.stage_nodes():
        node.meta["cache"] = {"decision": "flush", "reason": "baseline: flush per request"}
    plan.meta["cache_spans"] = []
    return plan


def plans(url: str) -> dict[str, Plan]:
    backends = [orla.backends.llamacpp("local", url=url)]
    model = orla.backends.DEFAULT_LOCAL_MODEL
    no_reuse = orla.Target(backend="local", model=model,
                           params={"extra_body": {"cache_prompt": False}})
    return {
        "flush per request": orla.compile(dag_math, backends=backends, mapping={"math": no_reuse},
                                          passes=[*orla.passes.DEFAULT_PASSES, flush_every_stage]),
        "workflow preserve": orla.compile(dag_math, backends=backends,
                                          mapping={"math": f"local/{model}"}),
    }


async def measure(url: str, texts: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    compiled = plans(url)
    async with orla.BackendPool(next(iter(compiled.values())).backends) as pool:
        for number, text in enumerate(texts):
            order = list(compiled) if number % 2 == 0 else list(reversed(compiled))
            for policy in order:
                result = (await orla.arun(compiled[policy], pool=pool, problem=text))
                rows += call_rows(policy, number, result.raise_for_error())
    return rows


def call_rows(policy: str, problem: int, result: orla.RunResult) -> list[dict[str, Any]]:
    """One row per model call of a run: its stage, TTFT and token counts."""
    return [{"policy": policy, "problem": problem, "stage": s.node, "ttft_s": c.ttft_s,
             "prompt_tokens": c.prompt_tokens, "cached_tokens": c.cached_tokens,
             "duration_s": c.duration_s} for s in result.stages for c in s.calls]


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table = {}
    for policy in sorted({r["policy"] for r in rows}):
        mine = [r for r in rows if r["policy"] == policy]
        ttfts = sorted(r["ttft_s"] for r in mine)
        table[policy] = {
            "calls": len(mine), "mean_ttft_s": statistics.fmean(ttfts),
            "median_ttft_s": statistics.median(ttfts),
            "p90_ttft_s": ttfts[int(0.9 * (len(ttfts) - 1))],
            "cached_fraction": sum(r["cached_tokens"] for r in mine)
            / max(1, sum(r["prompt_tokens"] for r in mine))}
    return table


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    return f"{platform.platform()}; {cpu}; Python {platform.python_version()}"


def report(table: dict[str, dict[str, float]]) -> str:
    base, ours = table["flush per request"], table["workflow preserve"]
    lines = [f"machine: {machine()}", "",
             "| policy | calls | mean TTFT s | median TTFT s | p90 TTFT s | cached prompt tokens |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {p} | {v['calls']:.0f} | {v['mean_ttft_s']:.3f} | {v['median_ttft_s']:.3f} | "
              f"{v['p90_ttft_s']:.3f} | {v['cached_fraction']:.0%} |" for p, v in table.items()]
    lines += ["", f"flush / preserve: mean TTFT {base['mean_ttft_s'] / ours['mean_ttft_s']:.2f}x, "
              f"median TTFT {base['median_ttft_s'] / ours['median_ttft_s']:.2f}x"]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for policy in sorted({r["policy"] for r in rows}):
        ttfts = sorted(r["ttft_s"] for r in rows if r["policy"] == policy)
        axes.step(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], where="post",
                  label=policy)
    axes.set_xlabel("time to first token (s)")
    axes.set_ylabel("fraction of calls")
    axes.set_title("DAG-MATH workflow on llama.cpp (SmolLM2-135M, CPU)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="llama.cpp threads (0: llama.cpp's default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalEngine(EngineConfig(slots=1, ctx_per_slot=8192, threads=args.threads)) as engine:
        rows = asyncio.run(measure(engine.url, problems(args.problems)))
    with open(args.out / "dag_math_cache.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = report(summarize(rows))
    (args.out / "dag_math_cache.md").write_text(text + "\n")
    plot(rows, args.out / "dag_math_cache_ttft_cdf.png")
    print(text)
    print(f"\nwrote {args.out}/dag_math_cache.csv, .md and _ttft_cdf.png")


if __name__ == "__main__":
    main()
