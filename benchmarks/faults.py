"""Workflows under faults: 10,000 durable workflows on the simulator behind its real HTTP
server, with a share of the chat calls broken by a fault proxy, then a process killed
at a random point and its runs resumed.

    python -m benchmarks.faults                        # 10,000 workflows at 10% faults
    python -m benchmarks.faults --workflows 500        # smoke run, about a minute

The workflow: ``classify`` (a JSON answer) then ``resolve``, whose model calls the
``refund`` tool, declared with effects (``@orla.tool(effect=True)``), before it answers.
Every run has a run id and a SQLite checkpoint store.

1. baseline: the same workflows, no faults (the first tenth of them), for the time
   ratio;
2. faulted: every workflow, ``--rate`` of the chat calls faulted (503s, resets before
   and during a stream, streams cut short or malformed, hangs past the call deadline,
   engine restarts of 3 to 6 s). Reported: workflows ok / failed with a clear error /
   lost (no output and no error) / hung (not done within ``--hung-after`` seconds),
   attempts per model call, and refunds made twice for one key (must be 0);
3. kill and resume: a child process runs ``--kill-workflows`` workflows and is killed
   (SIGKILL) at a random point; the runs it left are resumed here. Reported: stages the
   child completed that ran again (must be 0) and refunds made twice (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

import orla_sdk as orla
from benchmarks.compile_speed import describe_machine
from benchmarks.fault_proxy import FaultProxy
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.http import serve_http
from orla_sdk.runtime import current_stage

DEFAULT_OUT = Path(__file__).parent / "results"
DEADLINE_S = 4.0  # each model call's deadline (BackendPool(timeout=...))
ENGINE_DOWN_S = 30.0  # how long a call waits for a restarting engine
JOURNAL = "ORLA_FAULTS_JOURNAL"  # where stage bodies and refunds write what they did


class Triage(BaseModel):
    category: Literal["billing", "technical", "general"]
    order_id: str


def _journal(line: str) -> None:
    with open(os.environ[JOURNAL], "a") as journal:
        journal.write(line + "\n")


@orla.tool(effect=True)
def refund(order_id: str, idempotency_key: str = "") -> str:
    """Refund the customer's order."""
    _journal(f"refund {idempotency_key}")
    return f"refunded order {order_id}"


def _stage_ran() -> None:
    ctx = current_stage.get()
    assert ctx is not None
    _journal(f"stage {ctx.run.run_id} {ctx.key}")


@orla.stage(model="m")
async def classify(ticket: str) -> Triage:
    triage = await orla.agenerate(f"Triage this ticket: {ticket}", output=Triage,
                                  max_tokens=60)
    _stage_ran()
    return triage


@orla.stage(model="m", tools=[refund])
async def resolve(t: Triage) -> str:
    answer = await orla.agenerate(f"Resolve the {t.category} ticket of order {t.order_id}.",
                                  max_tokens=120, max_turns=1)
    _stage_ran()
    return answer


@orla.workflow
async def support(ticket: str) -> str:
    return resolve(classify(ticket))


# ---------------------------------------------------------------------------------
# One batch of workflows
# ---------------------------------------------------------------------------------
@contextmanager
def engine(rate: float, seed: int) -> Iterator[tuple[orla.Plan, FaultProxy]]:
    """The simulator behind its HTTP server, the fault proxy in front, and the plan."""
    sim_url, stop_sim = serve_http(SimEngine("qwen3-8b", clock="real", seed=seed))
    proxy = FaultProxy(sim_url, rate=rate, seed=seed, hang_s=10 * DEADLINE_S)
    url = proxy.start()
    spec = orla.backends.openai_compatible("sim", url + "/v1", models=["qwen3-8b"])
    try:
        yield orla.compile(support, backends=[spec], mapping={"m": "sim/qwen3-8b"}), proxy
    finally:
        proxy.stop()
        stop_sim()


async def run_batch(plan: orla.Plan, run_ids: list[str], store: Path, concurrency: int,
                    hung_after: float, resume: bool = False) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    attempts: list[int] = []
    errors: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(pool: orla.BackendPool, run_id: str) -> None:
        async with gate:
            try:
                result = await asyncio.wait_for(_run_or_resume(plan, pool, run_id, store,
                                                               resume), hung_after)
            except TimeoutError:
                outcomes["hung"] += 1
                return
            except Exception as exc:  # escaped orla.arun: the workflow is lost
                outcomes["lost"] += 1
                errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                return
        attempts.extend(c.attempts for s in result.stages if not s.restored for c in s.calls)
        if result.ok:
            outcomes["ok"] += 1
        elif result.error:
            outcomes["failed, clear error"] += 1
            errors[_error_kind(result.error)] += 1
        else:
            outcomes["lost"] += 1

    started = time.perf_counter()
    async with orla.BackendPool(plan.backends, timeout=DEADLINE_S,
                                engine_down_s=ENGINE_DOWN_S) as pool:
        await asyncio.gather(*(one(pool, r) for r in run_ids))
    return {"wall_s": time.perf_counter() - started, "outcomes": dict(outcomes),
            "attempts": attempts, "errors": dict(errors.most_common(5))}


async def _run_or_resume(plan: orla.Plan, pool: orla.BackendPool, run_id: str, store: Path,
                         resume: bool) -> orla.RunResult:
    if resume and _stored(store, run_id):
        return await orla.aresume(plan, run_id, checkpoint=store, pool=pool)
    return await orla.arun(plan, pool=pool, run_id=run_id, checkpoint=store,
                           ticket=f"ticket {run_id}: my order arrived broken")


def _stored(store: Path, run_id: str) -> bool:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def _error_kind(error: str) -> str:
    return error.split(":", 3)[-1].strip()[:100]


# ---------------------------------------------------------------------------------
# Kill and resume
# ---------------------------------------------------------------------------------
def kill_and_resume(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    store, journal = folder / "killed.db", folder / "killed.journal"
    run_ids = [f"k{i}" for i in range(args.kill_workflows)]
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.faults", "--child", str(store), "--rate",
         str(args.rate), "--seed", str(args.seed + 1), "--concurrency", str(args.concurrency),
         "--kill-workflows", str(args.kill_workflows)],
        env={**os.environ, JOURNAL: str(journal)})
    rng = random.Random(args.seed)
    target = rng.uniform(0.2, 0.8) * args.kill_workflows * 2  # stages completed before the kill
    while _completed_stages(store) < target and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    completed = _completed_keys(store)
    lines_before = len(journal.read_text().splitlines()) if journal.exists() else 0
    os.environ[JOURNAL] = str(journal)
    with engine(args.rate, args.seed + 2) as (plan, proxy):
        batch = asyncio.run(run_batch(plan, run_ids, store, args.concurrency,
                                      args.hung_after, resume=True))
    after = journal.read_text().splitlines()[lines_before:]
    again = [line for line in after if line.startswith("stage ")
             and tuple(line.split()[1:3]) in completed]
    return {"workflows": len(run_ids), "stages_completed_at_kill": len(completed),
            "completed_stages_run_again": len(again),
            "duplicate_refunds": _duplicates(journal), "resumed": batch["outcomes"],
            "faults": dict(proxy.counts)}


def _completed_stages(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store) as db:
            return int(db.execute("SELECT COUNT(*) FROM stages").fetchone()[0])
    except sqlite3.OperationalError:  # the child has not made its tables yet
        return 0


def _completed_keys(store: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(store) as db:
        return {(r, k) for r, k in db.execute("SELECT run_id, key FROM stages")}


def _duplicates(journal: Path) -> int:
    keys = Counter(line.split()[1] for line in journal.read_text().splitlines()
                   if line.startswith("refund "))
    return sum(n - 1 for n in keys.values() if n > 1)


def child_main(args: argparse.Namespace) -> None:
    """The process the kill phase kills: it runs the workflows until it is stopped."""
    run_ids = [f"k{i}" for i in range(args.kill_workflows)]
    with engine(args.rate, args.seed) as (plan, _):
        asyncio.run(run_batch(plan, run_ids, Path(args.child), args.concurrency, 600.0))


# ---------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------
def faulted_phases(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    run_ids = [f"w{i}" for i in range(args.workflows)]
    os.environ[JOURNAL] = str(folder / "baseline.journal")
    with engine(0.0, args.seed) as (plan, _):
        baseline = asyncio.run(run_batch(plan, run_ids[: max(1, args.workflows // 10)],
                                         folder / "baseline.db", args.concurrency,
                                         args.hung_after))
    os.environ[JOURNAL] = str(folder / "faulted.journal")
    with engine(args.rate, args.seed) as (plan, proxy):
        faulted = asyncio.run(run_batch(plan, run_ids, folder / "faulted.db",
                                        args.concurrency, args.hung_after))
    faulted["faults"] = dict(proxy.counts)
    faulted["duplicate_refunds"] = _duplicates(folder / "faulted.journal")
    return {"baseline": baseline, "faulted": faulted}


def summary(phases: dict[str, Any], kill: dict[str, Any], args: argparse.Namespace) -> str:
    base, hit = phases["baseline"], phases["faulted"]
    per_base = base["wall_s"] / max(1, sum(base["outcomes"].values()))
    per_hit = hit["wall_s"] / max(1, sum(hit["outcomes"].values()))
    attempts = hit["attempts"]
    histogram = dict(sorted(Counter(attempts).items()))
    lines = [
        f"machine: {json.dumps(describe_machine())}",
        f"workflows: {args.workflows} at {args.rate:.0%} faulted chat calls "
        f"(baseline: the first {sum(base['outcomes'].values())}, no faults); "
        f"{args.concurrency} in flight; call deadline {DEADLINE_S:g} s",
        f"faults injected: {hit['faults']}",
        f"outcomes, faulted: {hit['outcomes']}; baseline: {base['outcomes']}",
        f"errors, faulted: {hit['errors']}",
        f"attempts per model call: mean {statistics.fmean(attempts):.3f}, max "
        f"{max(attempts)}, histogram {histogram}",
        f"refunds made twice for one key: {hit['duplicate_refunds']}",
        f"wall per workflow: faulted {per_hit * 1000:.1f} ms, baseline "
        f"{per_base * 1000:.1f} ms, ratio {per_hit / per_base:.2f}x",
        f"kill and resume: {kill['workflows']} workflows, {kill['stages_completed_at_kill']} "
        f"stages completed when the child was killed; completed stages run again: "
        f"{kill['completed_stages_run_again']}; refunds made twice: "
        f"{kill['duplicate_refunds']}; resumed outcomes: {kill['resumed']}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=0.1, help="share of chat calls faulted")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--kill-workflows", type=int, default=1000)
    parser.add_argument("--hung-after", type=float, default=300.0,
                        help="seconds after which a workflow counts as hung")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the kill phase's process
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    with tempfile.TemporaryDirectory(prefix="orla-faults-") as tmp:
        phases = faulted_phases(args, Path(tmp))
        kill = kill_and_resume(args, Path(tmp))
    text = summary(phases, kill, args)
    print(text)
    for phase in phases.values():
        phase["attempts"] = dict(sorted(Counter(phase["attempts"]).items()))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"faults_n{args.workflows}"
    (args.out / f"{name}.json").write_text(json.dumps(
        {"machine": describe_machine(), "args": {k: str(v) for k, v in vars(args).items()},
         **phases, "kill": kill}, indent=2))
    (args.out / f"{name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
