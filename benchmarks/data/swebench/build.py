"""Derive this folder's files from the project's shared SWE-bench data.

    python -m benchmarks.data.swebench.build [--source ../shared/data/swebench]

Reads ``instances.jsonl.gz`` and ``prompt_lengths.csv`` from ``--source`` and writes,
next to this script:

- ``prompt_lengths.csv``: copied byte for byte;
- ``patch_stats.csv``: per instance, what its gold patch touches: ``files`` (paths named
  by ``diff --git`` headers), ``hunks`` (``@@`` headers), ``lines_added`` and
  ``lines_removed`` (``+``/``-`` lines, the ``+++``/``---`` file headers excluded);
- ``problems.jsonl.gz``: per instance ``instance_id``, ``repo``, ``in_lite`` and the
  first ``PROBLEM_CHARS`` characters of ``problem_statement`` (what the labelers and the
  real-engine runs read; the gold patches themselves are not copied).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[3] / "shared" / "data" / "swebench"
PROBLEM_CHARS = 2000


@dataclass(frozen=True)
class PatchStats:
    instance_id: str
    files: int
    hunks: int
    lines_added: int
    lines_removed: int


def patch_stats(instance_id: str, patch: str) -> PatchStats:
    files, hunks, added, removed = set(), 0, 0, 0
    for line in patch.splitlines():
        if line.startswith("diff --git "):
            files.add(line.split(" b/", 1)[-1])
        elif line.startswith("@@"):
            hunks += 1
        elif line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return PatchStats(instance_id, len(files), hunks, added, removed)


def read_instances(source: Path) -> list[dict[str, Any]]:
    with gzip.open(source / "instances.jsonl.gz", "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def write_patch_stats(instances: list[dict[str, Any]], path: Path) -> None:
    rows = [asdict(patch_stats(i["instance_id"], i["patch"])) for i in instances]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_problems(instances: list[dict[str, Any]], path: Path) -> None:
    # mtime=0: the same input gives the same bytes
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
        for i in instances:
            record = {"instance_id": i["instance_id"], "repo": i["repo"],
                      "in_lite": i["in_lite"],
                      "problem_statement": i["problem_statement"][:PROBLEM_CHARS]}
            packed.write((json.dumps(record) + "\n").encode("utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    instances = read_instances(args.source)
    shutil.copyfile(args.source / "prompt_lengths.csv", HERE / "prompt_lengths.csv")
    write_patch_stats(instances, HERE / "patch_stats.csv")
    write_problems(instances, HERE / "problems.jsonl.gz")
    print(f"wrote {len(instances)} instances to {HERE}")


if __name__ == "__main__":
    main()
