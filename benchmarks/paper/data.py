"""The SWE-bench instances as the experiments see them, read from the in-repository copy
(``benchmarks/data/swebench/``, built by its ``build.py``)."""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "swebench"


@dataclass(frozen=True)
class Instance:
    """One SWE-bench request: its sizes in Qwen3 tokens (``prompt_lengths.csv``), what its
    gold patch touches (``patch_stats.csv``) and the start of its issue text."""

    instance_id: str
    repo: str
    in_lite: bool
    prompt_tokens: int         # the main request: system prompt, issue, the patched files
    router_prompt_tokens: int  # the router's request: its instruction and the issue
    problem_tokens: int
    patch_tokens: int          # the gold patch
    files: int
    hunks: int
    lines_changed: int
    problem: str               # the issue text, cut (``build.PROBLEM_CHARS``)


def _rows(name: str) -> dict[str, dict[str, str]]:
    with open(DATA / name, encoding="utf-8") as handle:
        return {row["instance_id"]: row for row in csv.DictReader(handle)}


def _problems() -> dict[str, str]:
    with gzip.open(DATA / "problems.jsonl.gz", "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    return {r["instance_id"]: r["problem_statement"] for r in records}


def load_instances(data: Path = DATA) -> list[Instance]:
    """All 2,294 instances, sorted by id."""
    lengths, stats, problems = _rows("prompt_lengths.csv"), _rows("patch_stats.csv"), _problems()
    return [Instance(
        instance_id=key, repo=row["repo"], in_lite=row["in_lite"] == "True",
        prompt_tokens=int(row["prompt_tokens"]),
        router_prompt_tokens=int(row["router_prompt_tokens"]),
        problem_tokens=int(row["problem_tokens"]), patch_tokens=int(row["gold_patch_tokens"]),
        files=int(stats[key]["files"]), hunks=int(stats[key]["hunks"]),
        lines_changed=int(stats[key]["lines_added"]) + int(stats[key]["lines_removed"]),
        problem=problems[key]) for key, row in sorted(lengths.items())]
