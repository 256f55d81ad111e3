"""``sim_10k`` against an earlier commit, side by side on the same machine.

    python -m benchmarks.sim_10k_vs REV [--workflows 10000] [--trials 3]
    python -m benchmarks.sim_10k_vs HEAD~1 --workflows 500 --trials 1   # a check, seconds

A shared machine's speed moves by a fifth from one minute to the next, more than most
changes worth measuring, so runs one after the other compare minutes as much as code.
Here each trial starts REV's workflows (from a temporary git worktree) and this
checkout's at the same moment, in two processes on the machine's cores, and keeps both
sides running until the slower side's first run ends: the faster side runs again
meanwhile, and a run still going at the end is stopped and not counted. Both sides so
meet nearly the same load over the same minutes (a rerun's start-up, a second or two,
runs beside the other side's workflows). A trial's ratio is the median of REV's wall
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

# Run in a side's own checkout (its path first on sys.path): writes one JSON object.
SIDE = """
import asyncio, json, os, sys, time
root, workflows, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, root)
import orla_sdk
from benchmarks import sim_10k
assert orla_sdk.__file__.startswith(root + os.sep), orla_sdk.__file__
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
with open(out, "w") as result:
    json.dump({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
               "ok": ok, "tuned": tune is not None, "error": error}, result)
"""


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    ok: int
    tuned: bool
    error: str | None


class Side:
    """One checkout's runs in a trial, one process at a time; each writes its result to
    ``result`` and its output (progress, errors) to ``log``, files in ``folder``."""

    def __init__(self, root: Path, workflows: int, folder: Path) -> None:
        self.root, self.workflows = root, workflows
        self.result, self.log = folder / "result.json", folder / "output.log"
        self.runs: list[Run] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.result.unlink(missing_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", SIDE, str(self.root), str(self.workflows),
                 str(self.result)], cwd=self.root, stdout=log, stderr=subprocess.STDOUT)

    def poll(self) -> bool:
        """Whether a run just finished (it is recorded)."""
        assert self.process is not None
        if self.process.poll() is None:
            return False
        if self.process.returncode != 0 or not self.result.exists():
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"the run in {self.root} exited with "
                               f"{self.process.returncode}:\n" + "\n".join(tail))
        self.runs.append(Run(**json.loads(self.result.read_text())))
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def trial(base: Path, here: Path, workflows: int, folder: Path
          ) -> tuple[list[Run], list[Run]]:
    """Both sides at once until each has finished a run; the faster side reruns."""
    sides = []
    for name, root in (("base", base), ("here", here)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        sides.append(Side(root, workflows, folder / name))
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


def add_worktree(rev: str, into: Path) -> None:
    added = subprocess.run(["git", "worktree", "add", "--detach", str(into), rev], cwd=HERE,
                           capture_output=True, text=True)
    if added.returncode != 0:
        raise SystemExit(f"git could not check out {rev!r}: {added.stderr.strip()}")


def remove_worktree(into: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(into)], cwd=HERE,
                   capture_output=True)
    subprocess.run(["git", "worktree", "prune"], cwd=HERE, capture_output=True)


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
    if args.trials < 1 or args.workflows < 1:
        parser.error("--trials and --workflows need at least 1")
    with tempfile.TemporaryDirectory(prefix="orla-sim10k-vs-") as tmp:
        base = Path(tmp) / "base"
        try:
            add_worktree(args.rev, base)
            trials = []
            for number in range(1, args.trials + 1):
                trials.append(trial(base, HERE, args.workflows, Path(tmp) / f"trial{number}"))
                print(f"  trial {number}/{args.trials} done", file=sys.stderr, flush=True)
        finally:
            remove_worktree(base)
    print(report(args.rev, trials, args.workflows))


if __name__ == "__main__":
    main()
