"""Router decisions from a small real model: SmolLM2-135M on the embedded llama.cpp engine.

    nice -n 10 python -m benchmarks.label_smollm2 [--budget-min 25] [--issue-chars 1000]

For each SWE-bench instance, in a fixed random order (seed ``ORDER_SEED``), the engine
(one slot, one thread) is asked the released Orla router's question: the routing
instruction, then the issue text cut to ``--issue-chars`` characters (about 250 tokens),
answered as JSON ``{"prediction": true|false}`` through the engine's JSON-schema mode
(true: the light model), at temperature 0 with at most ``MAX_TOKENS`` tokens. The
instruction comes first so that llama.cpp's slot keeps it cached between requests.

Decisions are appended to ``benchmarks/data/swebench/labels_smollm2.csv`` with the
answer itself, the prompt tokens and the seconds each took (``light`` is 1, 0, or empty
where the answer holds no boolean, read as ``labelers.prediction`` reads it; the
experiment counts an empty one as heavy, as ``OneBitStageMapper`` does). A rerun
skips instances already labelled, so a run cut short by ``--budget-min`` is a random
subset and can be extended later.
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.paper.data import load_instances
from benchmarks.paper.labelers import prediction
from orla_sdk.backends.engine import EngineConfig, LocalEngine

LABELS = Path(__file__).resolve().parent / "data" / "swebench" / "labels_smollm2.csv"
FIELDS = ["instance_id", "light", "answer", "prompt_tokens", "seconds"]
ORDER_SEED = 14
MAX_TOKENS = 16  # the JSON object with the whitespace SmolLM2 puts in it
# The routing instruction of Orla's released SWE-bench example
# (examples/swe_bench_lite/single_shot/single_shot.go, MIT licence), verbatim.
ROUTER_INSTRUCTION = (
    "You are classifying a software engineering task for routing. Judge based on the task "
    "description only.\n\nChoose true (light) when the fix is likely: a single file or few "
    "lines, a clear bug (typo, wrong constant, off-by-one), config/test/doc tweak, or the "
    "issue clearly points to an obvious file or location.\n\nChoose false (heavy) when the "
    "fix likely needs: multiple files, unclear root cause, design or API changes, or "
    "reasoning across several parts of the codebase.\n\nApply the criteria above; choose "
    "the option that best matches the task. Output prediction: ")
SCHEMA = {"type": "object", "properties": {"prediction": {"type": "boolean"}},
          "required": ["prediction"]}


def ask(url: str, issue: str) -> dict[str, Any]:
    body = {"model": "m", "max_tokens": MAX_TOKENS, "temperature": 0, "id_slot": 0,
            "messages": [{"role": "user", "content": ROUTER_INSTRUCTION + "\n\n" + issue}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "route", "schema": SCHEMA}}}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    reply: dict[str, Any] = response.json()
    return reply


def decision(answer: str) -> str:
    """'1' (light), '0' (heavy) or '' when the answer holds no boolean."""
    return {True: "1", False: "0", None: ""}[prediction(answer)]


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with open(path, encoding="utf-8") as handle:
        return {row["instance_id"] for row in csv.DictReader(handle)}


def label(url: str, issue_chars: int, budget_s: float, path: Path) -> int:
    todo = [i for i in load_instances() if i.instance_id not in done_ids(path)]
    random.Random(ORDER_SEED).shuffle(todo)
    fresh = not path.exists()
    started, count = time.monotonic(), 0
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if fresh:
            writer.writeheader()
        for instance in todo:
            if time.monotonic() - started > budget_s:
                break
            begun = time.monotonic()
            reply = ask(url, instance.problem[:issue_chars])
            answer = reply["choices"][0]["message"]["content"] or ""
            writer.writerow({"instance_id": instance.instance_id, "light": decision(answer),
                             "answer": " ".join(answer.split()),
                             "prompt_tokens": reply["usage"]["prompt_tokens"],
                             "seconds": f"{time.monotonic() - begun:.3f}"})
            handle.flush()
            count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=25.0,
                        help="stop after this many minutes (the rest stays unlabelled)")
    parser.add_argument("--issue-chars", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=LABELS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    with LocalEngine(EngineConfig(slots=1, ctx_per_slot=2048, threads=1)) as engine:
        count = label(engine.url, args.issue_chars, 60 * args.budget_min, args.out)
    took = time.monotonic() - started
    print(f"labelled {count} instances in {took / 60:.1f} min "
          f"({took / max(count, 1):.2f} s each); {len(done_ids(args.out))} in {args.out}")


if __name__ == "__main__":
    main()
