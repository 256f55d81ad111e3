"""Router decisions: which SWE-bench requests a one-bit router would call simple (light).

A labeler maps every instance to True (light) or False (heavy). The experiment feeds its
decision to ``OneBitStageMapper`` as the light model's answer, so the mapper, not the
labeler, does the routing. Three labelers:

- ``oracle``: from the gold patch, the released router's own criterion made exact: light
  when the fix touches one file, in at most ``ORACLE_MAX_HUNKS`` hunks and at most
  ``ORACLE_MAX_LINES`` changed lines. It knows what no router can know before the fix;
  it bounds what a good router could do.
- ``random``: exactly the paper's split (956 of 2,294 light), chosen at random (seeded):
  the paper's routing rate without any routing skill.
- ``smollm2``: the answers SmolLM2-135M gave on the embedded engine
  (``benchmarks/label_smollm2.py``), read from ``labels_smollm2.csv``. The decision is the
  boolean after ``"prediction":`` (the JSON-schema grammar allows only a boolean there;
  SmolLM2 often pads the object with whitespace until ``max_tokens`` cuts it before the
  closing brace). An answer without one, or an instance not labelled, counts as heavy, as
  ``OneBitStageMapper`` counts an answer that is neither simple nor complex.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.paper.data import DATA, Instance

Labels = dict[str, bool]
PAPER_LIGHT, PAPER_TOTAL = 956, 2294
ORACLE_MAX_HUNKS, ORACLE_MAX_LINES = 2, 10
RANDOM_SEED = 956
SMOLLM2_LABELS = DATA / "labels_smollm2.csv"
PREDICTION = re.compile(r'"prediction"\s*:\s*(true|false)')


def oracle(instances: Sequence[Instance]) -> Labels:
    return {i.instance_id: i.files == 1 and i.hunks <= ORACLE_MAX_HUNKS
            and i.lines_changed <= ORACLE_MAX_LINES for i in instances}


def rate_matched(instances: Sequence[Instance]) -> Labels:
    """The paper's share of light requests (956 of 2,294), scaled to ``instances``."""
    light_count = round(len(instances) * PAPER_LIGHT / PAPER_TOTAL)
    chosen = set(random.Random(RANDOM_SEED).sample([i.instance_id for i in instances],
                                                   light_count))
    return {i.instance_id: i.instance_id in chosen for i in instances}


def prediction(answer: str) -> bool | None:
    """The router's answer: True (light), False (heavy), None when it gave no boolean."""
    found = PREDICTION.search(answer)
    return None if found is None else found.group(1) == "true"


def smollm2(instances: Sequence[Instance], path: Path = SMOLLM2_LABELS) -> Labels:
    with open(path, encoding="utf-8") as handle:
        answers = {row["instance_id"]: prediction(row["answer"]) is True
                   for row in csv.DictReader(handle)}
    return {i.instance_id: answers.get(i.instance_id, False) for i in instances}


def smollm2_coverage(instances: Sequence[Instance], path: Path = SMOLLM2_LABELS) -> int:
    """How many of ``instances`` SmolLM2 labelled (parsed or not)."""
    with open(path, encoding="utf-8") as handle:
        labelled = {row["instance_id"] for row in csv.DictReader(handle)}
    return sum(i.instance_id in labelled for i in instances)


LABELERS: dict[str, Callable[[Sequence[Instance]], Labels]] = {
    "oracle": oracle, "random": rate_matched, "smollm2": smollm2}
