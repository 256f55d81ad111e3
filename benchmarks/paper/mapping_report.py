"""Tables and plots of the stage-mapping experiment, beside the paper's figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.paper.data import Instance
from benchmarks.paper.labelers import Labels
from benchmarks.paper.stage_mapping import RunResult

# Orla paper, Section 4: stage mapping against the Qwen3-8B baseline on 2,294 requests.
PAPER = {"light": 956, "wall": -0.38, "mean_completion": -0.60, "cost": -0.35}


def summary(result: RunResult) -> dict[str, Any]:
    done = result.done()
    completion = sorted(s.completion_s for s in done)
    return {
        "name": result.setup.name, "light": result.light_count(),
        "rerouted": sum(s.rerouted for s in result.served), "requests": len(result.served),
        "refused": len(result.served) - len(done), "wall_s": result.wall_s,
        "mean_completion_s": result.mean_completion_s,
        "median_completion_s": statistics.median(completion),
        "p90_completion_s": completion[int(0.9 * (len(completion) - 1))],
        "cost_usd": result.cost, "routing_s": result.routing_s,
        "output_tokens": sum(s.output_tokens for s in done),
        "cached_share": sum(s.cached_tokens for s in done) / sum(s.prompt_tokens for s in done),
        "in_flight": result.in_flight}


def change(value: float, base: float) -> str:
    return f"{value / base - 1:+.0%}"


def results_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    base = rows[0]
    lines = ["| configuration | routed light (+ rerouted) / all | wall s | vs baseline | mean "
             "completion s | vs baseline | p90 completion s | cost $ | vs baseline | routing "
             "phase s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_light(r)} / {r['requests']:,} | {r['wall_s']:,.0f} | "
            f"{change(r['wall_s'], base['wall_s'])} | {r['mean_completion_s']:,.0f} | "
            f"{change(r['mean_completion_s'], base['mean_completion_s'])} | "
            f"{r['p90_completion_s']:,.0f} | {r['cost_usd']:.2f} | "
            f"{change(r['cost_usd'], base['cost_usd'])} | {r['routing_s']:,.0f} |")
    return lines


def _light(row: dict[str, Any]) -> str:
    return f"{row['light']:,}" + (f" (+ {row['rerouted']:,})" if row["rerouted"] else "")


def paper_table(base: dict[str, Any], mapping: dict[str, Any],
                best: dict[str, Any]) -> list[str]:
    def cell(key: str, row: dict[str, Any]) -> str:
        return change(row[key], base[key])

    return ["| | paper | simulated, the paper's mapping | simulated, orla's best |",
            "|---|---:|---:|---:|",
            f"| routed light (+ rerouted under load) | {PAPER['light']:,} of 2,294 | "
            f"{_light(mapping)} of {mapping['requests']:,} | {_light(best)} of "
            f"{best['requests']:,} |",
            f"| wall-clock time | {PAPER['wall']:+.0%} | {cell('wall_s', mapping)} | "
            f"{cell('wall_s', best)} |",
            f"| mean completion time | {PAPER['mean_completion']:+.0%} | "
            f"{cell('mean_completion_s', mapping)} | {cell('mean_completion_s', best)} |",
            f"| estimated cost | {PAPER['cost']:+.0%} | {cell('cost_usd', mapping)} | "
            f"{cell('cost_usd', best)} |"]


def contributions(rows: Sequence[dict[str, Any]], base: dict[str, Any]) -> list[str]:
    """What each step of a cumulative stack adds, in points of the baseline."""
    lines = ["| step | wall vs baseline | change | mean completion vs baseline | change | "
             "cost vs baseline |", "|---|---:|---:|---:|---:|---:|"]
    previous: tuple[float, float] | None = None
    for r in rows:
        wall = r["wall_s"] / base["wall_s"] - 1
        mean = r["mean_completion_s"] / base["mean_completion_s"] - 1
        steps = ("", "") if previous is None else (
            f"{100 * (wall - previous[0]):+.1f} pp", f"{100 * (mean - previous[1]):+.1f} pp")
        lines.append(f"| {r['name']} | {wall:+.1%} | {steps[0]} | {mean:+.1%} | {steps[1]} "
                     f"| {change(r['cost_usd'], base['cost_usd'])} |")
        previous = wall, mean
    return lines


def split_table(instances: Sequence[Instance], labelers: dict[str, Labels]) -> list[str]:
    """Each labeler's split, and how often it agrees with the gold-patch oracle."""
    oracle = labelers["oracle"]
    lines = ["| labeler | light | heavy | agrees with the oracle | light among oracle-light | "
             "light among oracle-heavy |", "|---|---:|---:|---:|---:|---:|"]
    for name, labels in labelers.items():
        light = sum(labels[i.instance_id] for i in instances)
        agree = sum(labels[i.instance_id] == oracle[i.instance_id] for i in instances)
        simple = [i for i in instances if oracle[i.instance_id]]
        hard = [i for i in instances if not oracle[i.instance_id]]
        lines.append(f"| {name} | {light:,} | {len(instances) - light:,} | "
                     f"{agree / len(instances):.0%} | "
                     f"{sum(labels[i.instance_id] for i in simple) / len(simple):.0%} | "
                     f"{sum(labels[i.instance_id] for i in hard) / len(hard):.0%} |")
    return lines


def plot(results: Sequence[RunResult], highlight: Sequence[str], path: Path) -> None:
    """The paper's three panels: wall time, completion-time distribution, cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [summary(r) for r in results]
    names = [r["name"] for r in rows]
    figure, (wall, cdf, cost) = plt.subplots(1, 3, figsize=(16, 4.8))
    wall.barh(names, [r["wall_s"] / 60 for r in rows], color="tab:blue")
    wall.set_xlabel("wall-clock time (simulated minutes)")
    wall.invert_yaxis()
    for result in results:
        if result.setup.name in highlight:
            times = sorted(s.completion_s / 60 for s in result.done())
            cdf.step(times, [(i + 1) / len(times) for i in range(len(times))], where="post",
                     label=result.setup.name)
    cdf.set_xlabel("completion time (simulated minutes)")
    cdf.set_ylabel("fraction of requests")
    cdf.legend(fontsize=8, loc="lower right")
    cost.barh(names, [r["cost_usd"] for r in rows], color="tab:green")
    cost.set_xlabel("estimated cost (US$, OpenRouter prices)")
    cost.invert_yaxis()
    cost.set_yticklabels([])
    figure.suptitle(f"SWE-bench stage mapping, {len(results[0].served):,} requests, simulated "
                    "RTX PRO 6000 Max-Q (Qwen3-8B 60% + Qwen3-4B 35%)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
