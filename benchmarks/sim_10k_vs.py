"""``sim_10k`` against an earlier commit, side by side on the same machine.

    python -m benchmarks.sim_10k_vs REV [--workflows 10000] [--trials 3]
    python -m benchmarks.sim_10k_vs HEAD~1 --workflows 500 --trials 1   # a check, seconds

A shared machine's speed moves by a fifth from one minute to the next, more than most
changes worth measuring, so runs one after the other compare minutes as much as code.
Here each trial starts REV's workflows (from a temporary git worktree) and this
checkout's at the same moment, in two processes on the machine's cores, and keeps both
sides running until the slower side's first run ends: the faster side runs again
meanwhile, and a run still going at the end is stopped and not counted. Both sides so
meet the same load for the same minutes. A trial's ratio is the median of REV's wall
times over the median of this checkout's (and the same for process CPU time).

Each side runs its own ``benchmarks/sim_10k.py`` workflow (``compile_plan("sync")`` and
``run_all``), as that version runs it by default: with ``tune_gc_for_serving()`` where
the version has it, else with Python's collector settings. A version whose ``run_all``
fails after the workflows (an old one's reporting) is timed to the failure, which is
printed, with the number of workflows that finished ok.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.compile_speed import describe_machine

HERE = Path(__file__).resolve().parent.parent
POLL_S = 0.2

# Run in a side's own checkout (its path first on sys.path): prints one JSON line.
SIDE = """
import asyncio, json, sys, time
root, workflows = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, root)
import orla_sdk
from benchmarks import sim_10k
assert orla_sdk.__file__.startswith(root), orla_sdk.__file__
plan = sim_10k.compile_plan("sync")
tune = getattr(orla_sdk.runtime, "tune_gc_for_serving", None)
if tune is not None:
    tune()
ok = 0
arun = orla_sdk.arun
async def counted(*args, **kwargs):
    global ok
    result = await arun(*args, **kwargs)
    ok += bool(result.ok)
    return result
orla_sdk.arun = counted
error = None
wall, cpu = time.perf_counter(), time.process_time()
try:
    asyncio.run(sim_10k.run_all(plan, workflows, None))
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                  "ok": ok, "tuned": tune is not None, "error": error}))
"""


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    ok: int
    tuned: bool
    error: str | None


class Side:
    """One checkout's runs in a trial, one process at a time."""

    def __init__(self, root: Path, workflows: int) -> None:
        self.root, self.workflows = root, workflows
        self.runs: list[Run] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SIDE, str(self.root), str(self.workflows)],
            cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def poll(self) -> bool:
        """Whether a run just finished (it is recorded)."""
        assert self.process is not None
        if self.process.poll() is None:
            return False
        out, _ = self.process.communicate()
        if self.process.returncode != 0 or not out.strip():
            raise RuntimeError(f"the run in {self.root} exited with {self.process.returncode}")
        self.runs.append(Run(**json.loads(out.strip().splitlines()[-1])))
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def trial(base: Path, here: Path, workflows: int) -> tuple[list[Run], list[Run]]:
    """Both sides at once until each has finished a run; the faster side reruns."""
    sides = [Side(base, workflows), Side(here, workflows)]
    try:
        for side in sides:
            side.start()
        while not all(side.runs for side in sides):
            time.sleep(POLL_S)
            for side in sides:
                if side.poll() and not all(s.runs for s in sides):
                    side.start()
    finally:
        for side in sides:
            side.stop()
    return sides[0].runs, sides[1].runs


def worktree(rev: str, into: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(into), rev], cwd=HERE,
                   check=True, capture_output=True, text=True)
    return into


def ratio(base: list[Run], here: list[Run], field: str) -> float:
    medians = [statistics.median(float(getattr(r, field)) for r in runs)
               for runs in (base, here)]
    return medians[0] / medians[1]


def report(rev: str, trials: list[tuple[list[Run], list[Run]]], workflows: int) -> str:
    machine = describe_machine()
    lines = [f"## sim_10k, {workflows:,} workflows: {rev} against this checkout, side by side",
             "", f"Machine: {machine['platform']}; {machine['cpu']}, {machine['cores']} cores; "
             f"{machine['python']}; load average at the end "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
             f"| trial | {rev}: wall s | now: wall s | wall ratio | CPU ratio |",
             "|---|---|---|---:|---:|"]
    for number, (base, here) in enumerate(trials, 1):
        times = [", ".join(f"{r.wall_s:.1f}" for r in runs) for runs in (base, here)]
        lines.append(f"| {number} | {times[0]} | {times[1]} | "
                     f"{ratio(base, here, 'wall_s'):.2f}x | {ratio(base, here, 'cpu_s'):.2f}x |")
    walls = [ratio(b, h, "wall_s") for b, h in trials]
    cpus = [ratio(b, h, "cpu_s") for b, h in trials]
    lines += ["", f"Median over trials: wall time {statistics.median(walls):.2f}x, process "
              f"CPU {statistics.median(cpus):.2f}x ({rev} / now)."]
    for name, runs in ((rev, [r for b, _ in trials for r in b]),
                       ("now", [r for _, h in trials for r in h])):
        collector = "tune_gc_for_serving()" if runs[0].tuned else "Python's collector"
        finished = ", ".join(f"{r.ok:,}" for r in runs)
        lines.append(f"- {name}: {collector}; workflows ok per run: {finished}.")
        for error in sorted({r.error for r in runs if r.error}):
            lines.append(f"  Its run_all raised {error} (timed to there).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the commit to compare against (a git revision)")
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orla-sim10k-vs-") as tmp:
        base = worktree(args.rev, Path(tmp) / "base")
        try:
            trials = []
            for number in range(1, args.trials + 1):
                trials.append(trial(base, HERE, args.workflows))
                print(f"  trial {number}/{args.trials} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=HERE,
                           capture_output=True)
    print(report(args.rev, trials, args.workflows))


if __name__ == "__main__":
    main()
