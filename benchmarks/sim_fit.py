"""Fit the simulator's SmolLM2-135M profile against the real llama.cpp engine.

    python -m benchmarks.sim_fit [--repeat 5] [--out DIR]
    python -m benchmarks.sim_fit --crosscheck [--out DIR]

Starts the embedded engine (``LocalEngine``: 4 slots of 4,096 tokens, the runtime's
default) and reads llama.cpp's own per-request timings:

- prefill: cold prompts of a handful of lengths (the slot is erased before each), one
  output token; fitted as ``prefill_ms = base + per_token * prompt_tokens``;
- decode: replies of fixed length (``ignore_eos``) after short and long prompts, alone and
  with up to 4 requests decoding together; the time of one step is ``predicted_ms /
  (predicted_n - 1)`` (the first token comes with the prefill), fitted as ``step_ms =
  base + per_seq * batch + per_kv_token * tokens_held_by_the_batch``.

Each point is the fastest of ``--repeat`` runs, since other work on the machine can only
add time; ``spread`` (slowest run over fastest) shows how quiet the machine was. The fit
is least squares on the relative errors (normal equations, stdlib only); a coefficient
that comes out negative is dropped and the rest refitted. It prints measured and fitted
times side by side with the relative error and the machine, and writes ``sim_fit.json``
and ``sim_fit.md`` to the results folder.

``--crosscheck`` runs no engine: it puts the ``qwen3-8b`` profile, derived from first
principles, through the closed-loop workloads of a public benchmark of Qwen3-8B on one
H100 (``CROSSCHECK``) and prints simulated against published output throughput
(``sim_crosscheck.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import os
import platform
import random
import statistics
import string
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from orla_sdk.backends.base import ChatRequest
from orla_sdk.backends.engine import EngineConfig, LocalEngine
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.profiles import PROFILES
from orla_sdk.backends.sim.tokens import render_prompt

DEFAULT_OUT = Path(__file__).parent / "results"
SLOTS, CTX_PER_SLOT = 4, 4096
PREFILL_SENTENCES = [4, 12, 28, 60, 124, 188]   # about 64 to 1,536 prompt tokens
DECODE_CASES = [  # (sentences in the prompt, tokens to generate, requests decoding together)
    (1, 32, 1), (1, 128, 1), (124, 32, 1), (124, 128, 1), (250, 64, 1),
    (1, 64, 2), (1, 64, 3), (1, 64, 4),
]


@dataclass
class Point:
    kind: str            # "prefill" or "decode"
    prompt_tokens: int
    output_tokens: int
    batch: int
    features: list[float]
    measured_ms: float
    spread: float        # slowest run over fastest: near 1 on a quiet machine
    fitted_ms: float = 0.0

    def error(self) -> float:
        return (self.fitted_ms - self.measured_ms) / self.measured_ms


# ---- talking to the engine ----------------------------------------------------------------
def prompt(sentences: int, tag: str) -> str:
    return f"Case {tag}. " + " ".join(f"Rule {i}: answer the customer politely."
                                      for i in range(sentences))


def complete(url: str, text: str, slot: int, max_tokens: int) -> dict[str, Any]:
    body = {"model": "m", "max_tokens": max_tokens, "ignore_eos": True, "id_slot": slot,
            "messages": [{"role": "user", "content": text}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    timings: dict[str, Any] = response.json()["timings"]
    return timings


def erase(url: str, slot: int) -> None:
    httpx.post(f"{url}/slots/{slot}", params={"action": "erase"}, timeout=30).raise_for_status()


def together(url: str, texts: list[str], tokens: int) -> list[dict[str, Any]]:
    """Send one request a slot at once, so that their replies decode in the same steps."""
    results: list[dict[str, Any]] = [{} for _ in texts]

    def run(slot: int) -> None:
        results[slot] = complete(url, texts[slot], slot, tokens)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def measure_prefill(url: str, sentences: int, repeat: int) -> Point:
    runs = []
    for r in range(repeat):
        erase(url, 0)
        runs.append(complete(url, prompt(sentences, f"p{r}"), slot=0, max_tokens=1))
    n = runs[0]["prompt_n"]
    return Point("prefill", n, 1, 1, [1.0, float(n)], *fastest_and_spread(
        [t["prompt_ms"] for t in runs]))


def measure_decode(url: str, sentences: int, tokens: int, batch: int, repeat: int) -> Point:
    steps, prompt_n = [], 0
    for r in range(repeat):
        for slot in range(batch):
            erase(url, slot)
        results = together(url, [prompt(sentences, f"d{r}s{slot}") for slot in range(batch)],
                           tokens)
        prompt_n = results[0]["prompt_n"]
        steps.append(statistics.mean(t["predicted_ms"] / (t["predicted_n"] - 1)
                                     for t in results))
    held = batch * (prompt_n + tokens / 2)  # tokens in the batch's KV, averaged over the reply
    return Point("decode", prompt_n, tokens, batch, [1.0, float(batch), held],
                 *fastest_and_spread(steps))


def fastest_and_spread(samples: list[float]) -> tuple[float, float]:
    return min(samples), max(samples) / min(samples)


# ---- least squares --------------------------------------------------------------------------
def least_squares(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Minimise |rows @ x - ys| through the normal equations."""
    n = len(rows[0])
    matrix = [[sum(r[i] * r[j] for r in rows) for j in range(n)]
              + [sum(r[i] * y for r, y in zip(rows, ys, strict=True))] for i in range(n)]
    for col in range(n):  # Gauss-Jordan with partial pivoting
        pivot = max(range(col, n), key=lambda row: abs(matrix[row][col]))
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        for row in range(n):
            if row != col:
                factor = matrix[row][col] / matrix[col][col]
                matrix[row] = [a - factor * b for a, b in zip(matrix[row], matrix[col],
                                                              strict=True)]
    return [matrix[i][n] / matrix[i][i] for i in range(n)]


def fit(points: list[Point]) -> list[float]:
    """Coefficients that minimise the squared relative errors (each row divided by its
    measurement), all non-negative: the most negative is dropped and the rest refitted."""
    columns = list(range(len(points[0].features)))
    while True:
        rows = [[p.features[c] / p.measured_ms for c in columns] for p in points]
        solved = dict(zip(columns, least_squares(rows, [1.0] * len(points)), strict=True))
        worst = min(columns, key=lambda c: solved[c])
        if solved[worst] >= 0 or len(columns) == 1:
            coefficients = [max(solved.get(c, 0.0), 0.0) for c in range(len(points[0].features))]
            for p in points:
                p.fitted_ms = sum(c * f for c, f in zip(coefficients, p.features, strict=True))
            return coefficients
        columns.remove(worst)


# ---- report ---------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()} {platform.machine()}; {cpu}, "
            f"{os.cpu_count()} cores; CPython {platform.python_version()}; xllamacpp "
            f"{importlib.metadata.version('xllamacpp')}; SmolLM2-135M-Instruct Q4_1")


def table(points: list[Point]) -> list[str]:
    lines = ["| phase | prompt tokens | output tokens | batch | measured ms | spread | fitted ms "
             "| error |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        what = "prefill (whole prompt)" if p.kind == "prefill" else "decode (one step)"
        lines.append(f"| {what} | {p.prompt_tokens} | {p.output_tokens} | {p.batch} | "
                     f"{p.measured_ms:.2f} | {p.spread:.2f} | {p.fitted_ms:.2f} | "
                     f"{p.error():+.1%} |")
    return lines


def profile_numbers(prefill: list[float], decode: list[float]) -> dict[str, float]:
    return {"prefill_base_s": prefill[0] / 1e3, "prefill_per_token_s": prefill[1] / 1e3,
            "decode_base_s": decode[0] / 1e3, "decode_per_seq_s": decode[1] / 1e3,
            "decode_per_kv_token_s": decode[2] / 1e3}


# ---- the datacenter profile against published measurements -------------------------------
# Qwen3-8B bf16 on one H100-80GB with vLLM, at the most users that met a p99 TTFT of 2 s and
# a median inter-token latency of 50 ms: the capacity results of tgarg01/silybench-data
# (derived/index.json). (workload, users, prompt tokens, output tokens, output tokens/s)
CROSSCHECK = [
    ("chat-128-128", 512, 128, 128, 14539.5), ("prefill-1024-128", 80, 1024, 128, 3017.7),
    ("decode-128-1024", 396, 128, 1024, 13322.0), ("balanced-2048-2048", 40, 2048, 2048, 2814.7),
    ("longctx-8192-512", 7, 8192, 512, 501.6),
]
HORIZON_S = 300.0  # simulated seconds per workload; the first third is warm-up


async def closed_loop(users: int, prompt_tokens: int, output_tokens: int) -> tuple[float, float]:
    """Output tokens/s and median inter-token seconds of ``users`` who each send a new
    request (a prompt sharing no prefix, a reply of fixed length) when the last returns."""
    profile = dataclasses.replace(PROFILES["qwen3-8b"], output_tokens_median=10**6)
    engine, rng = SimEngine(profile), random.Random(0)
    overhead = len(render_prompt([{"role": "user", "content": ""}]))
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=5)) for _ in range(4096)]
    finished: list[tuple[float, int, float]] = []

    async def user() -> None:
        while engine.clock.now() < HORIZON_S:
            text = " ".join(rng.choices(vocabulary, k=prompt_tokens - overhead))  # a word a token
            result = await engine.chat(ChatRequest(
                model="qwen3-8b", messages=[{"role": "user", "content": text}],
                params={"max_tokens": output_tokens}))
            gap = (result.duration_s - result.ttft_s) / (result.completion_tokens - 1)
            finished.append((engine.clock.now(), result.completion_tokens, gap))

    await asyncio.gather(*(user() for _ in range(users)))
    warm = [(t, n, gap) for t, n, gap in finished if t >= HORIZON_S / 3]
    span = max(t for t, _, _ in warm) - HORIZON_S / 3
    return sum(n for _, n, _ in warm) / span, statistics.median(gap for _, _, gap in warm)


def crosscheck() -> list[str]:
    lines = ["| workload | users | published tokens/s | simulated tokens/s | difference "
             "| simulated median ITL ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, users, prompt_tokens, output_tokens, published in CROSSCHECK:
        rate, gap = asyncio.run(closed_loop(users, prompt_tokens, output_tokens))
        lines.append(f"| {name} | {users} | {published:,.0f} | {rate:,.0f} | "
                     f"{rate / published - 1:+.0%} | {1e3 * gap:.1f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--crosscheck", action="store_true",
                        help="check the qwen3-8b profile against published measurements")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.crosscheck:
        (args.out / "sim_crosscheck.md").write_text("\n".join(crosscheck()) + "\n")
        return
    load_before = os.getloadavg()
    with LocalEngine(EngineConfig(slots=SLOTS, ctx_per_slot=CTX_PER_SLOT)) as engine:
        complete(engine.url, "Warm up.", slot=0, max_tokens=4)
        prefill = [measure_prefill(engine.url, s, args.repeat) for s in PREFILL_SENTENCES]
        decode = [measure_decode(engine.url, s, n, b, args.repeat) for s, n, b in DECODE_CASES]
    numbers = profile_numbers(fit(prefill), fit(decode))
    load = f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    lines = [f"Machine: {machine()}", f"Engine: llama.cpp, {SLOTS} slots x {CTX_PER_SLOT} "
             f"tokens; fastest of {args.repeat} runs; {load}", "", *table(prefill + decode), "",
             "Fitted profile numbers:", "",
             *[f"- `{name}` = {value:.6g}" for name, value in numbers.items()]]
    print("\n".join(lines))
    (args.out / "sim_fit.md").write_text("\n".join(lines) + "\n")
    (args.out / "sim_fit.json").write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "load": load, "repeat": args.repeat, "profile": numbers,
        "points": [asdict(p) for p in prefill + decode]}, indent=2) + "\n")
    print(f"\nwrote {args.out / 'sim_fit.md'} and {args.out / 'sim_fit.json'}")


if __name__ == "__main__":
    main()
