"""CacheSage's cost per decision and the state it keeps, against least-recently-used.

    python -m benchmarks.agent_policy_cost [--repeat 7] [--calls 2000] [--out DIR]

Workloads of 8, 64 and 512 agents whose speakers follow a seeded random Markov chain of
the realistic, skewed kind: each agent hands over to a handful (``SUCCESSORS``) of
likely successors with Pareto-distributed weights most of the time (``LIKELY_SHARE``),
else to any other agent. ``LIVE_RUNS`` runs are in flight at once, interleaved call by
call, each ending after ``RUN_STEPS`` calls (the layer's ``turn`` event with
``ended=True``). A fresh ``CacheSage`` learns from a warm-up stream (``WARMUP_PER_AGENT``
calls an agent, so every successor window is full) before anything is measured.

Measured, in one process, each the median of ``--repeat`` repeats:

- ``observe``: microseconds per ``call_started`` event, over ``--calls`` calls of the
  live runs;
- ``keep_scores`` over 8 and over 64 cached contexts (agents of the workload spread over
  the live runs, random ages): right after an ``observe`` (which clears the model's
  survival memo, so the first decision after each call pays for the first-passage sums;
  measured as the time of observe + score less the time of observe alone), and repeated
  (the memo warm: later decisions before the next call);
- baseline: ``LeastRecentlyUsed.keep_scores`` on the same candidates (it keeps no state).

State per workload: ``TransitionModel.state_bytes()`` (the compact encoding: one byte an
agent id, two beyond 256 agents) and the Python memory of building the policy, measured
with ``tracemalloc`` as the difference of two snapshots around creating the policy and
feeding it the warm-up stream and one ``keep_scores`` (so the survival memo is as in
use; its share is given apart), counting allocations made in ``orla_sdk/agents/`` (the
events themselves are built beforehand, so agent and run names are not counted). The
issue's target is under 20 KB of policy state per workload.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.compile_speed import describe_machine
from orla_sdk.agents import AgentEvent, AgentKey, Cached, CacheSage, LeastRecentlyUsed

AGENT_COUNTS = (8, 64, 512)
CANDIDATE_COUNTS = (8, 64)
SUCCESSORS = 4         # likely successors per agent
LIKELY_SHARE = 0.9     # share of hand-overs that go to one of them
PARETO_ALPHA = 1.2     # skew of the likely successors' weights
LIVE_RUNS = 4
RUN_STEPS = 32
WARMUP_PER_AGENT = 40
MAX_AGE = 200
TARGET_BYTES = 20_000
WORKLOAD = "bench"
SEED = 0
DEFAULT_REPEAT = 7
DEFAULT_CALLS = 2_000
DEFAULT_OUT = Path(__file__).parent / "results" / "agent_cache"


# ---------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chain:
    """Each agent's likely successors and their cumulative weights."""

    agents: list[str]
    likely: list[list[int]]
    weights: list[list[float]]

    def next_of(self, current: int, rng: random.Random) -> int:
        if rng.random() < LIKELY_SHARE:
            return rng.choices(self.likely[current], cum_weights=self.weights[current])[0]
        other = rng.randrange(len(self.agents) - 1)
        return other if other < current else other + 1


def chain(agents: int, rng: random.Random) -> Chain:
    names = [f"agent{i:03d}" for i in range(agents)]
    likely, weights = [], []
    for source in range(agents):
        others = [a for a in range(agents) if a != source]
        picked = rng.sample(others, min(SUCCESSORS, len(others)))
        raw = sorted((rng.paretovariate(PARETO_ALPHA) for _ in picked), reverse=True)
        likely.append(picked)
        weights.append([sum(raw[:i + 1]) for i in range(len(raw))])
    return Chain(names, likely, weights)


def run_events(chain: Chain, run: str, rng: random.Random, steps: int,
               start: int = 0) -> Iterator[AgentEvent]:
    """One run's ``call_started`` events, from agent 0 (or a random one past step 0)."""
    current = 0 if start == 0 else rng.randrange(len(chain.agents))
    for step in range(start, start + steps):
        yield AgentEvent("call_started", AgentKey(WORKLOAD, chain.agents[current], run, step))
        current = chain.next_of(current, rng)


def warmup_stream(chain: Chain, rng: random.Random) -> list[AgentEvent]:
    """``LIVE_RUNS`` runs at a time, call by call, each ended after ``RUN_STEPS`` calls;
    the last ``LIVE_RUNS`` runs are left live."""
    total = WARMUP_PER_AGENT * len(chain.agents)
    batches = -(-total // (RUN_STEPS * LIVE_RUNS)) + 1
    runs = [list(run_events(chain, f"run{n}", rng, RUN_STEPS))
            for n in range(batches * LIVE_RUNS)]
    events: list[AgentEvent] = []
    for first in range(0, len(runs), LIVE_RUNS):
        batch = runs[first:first + LIVE_RUNS]
        for step in range(RUN_STEPS):
            events += [run[step] for run in batch]
        if first + LIVE_RUNS < len(runs):
            events += [AgentEvent("turn", run[-1].key, data={"ended": True}) for run in batch]
    return events


def live_runs(events: Sequence[AgentEvent]) -> list[str]:
    return list(dict.fromkeys(e.key.run for e in events[-LIVE_RUNS:]))


def timed_stream(chain: Chain, runs: list[str], calls: int,
                 rng: random.Random) -> list[AgentEvent]:
    """More calls of the live runs, interleaved."""
    per_run = -(-calls // len(runs))
    streams = [list(run_events(chain, run, rng, per_run, start=RUN_STEPS)) for run in runs]
    return [stream[step] for step in range(per_run) for stream in streams][:calls]


def candidates(chain: Chain, runs: list[str], count: int, rng: random.Random) -> list[Cached]:
    return [Cached(AgentKey(WORKLOAD, rng.choice(chain.agents), runs[i % len(runs)]),
                   rng.randrange(MAX_AGE), ref=i) for i in range(count)]


# ---------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------
def seconds(body: Callable[[], None]) -> float:
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        body()
        return time.perf_counter() - started
    finally:
        gc.enable()


def median_us(repeat: int, count: int, body: Callable[[], None]) -> float:
    return statistics.median(seconds(body) for _ in range(repeat)) / count * 1e6


def trained(events: Sequence[AgentEvent]) -> CacheSage:
    policy = CacheSage()
    for event in events:
        policy.observe(event)
    return policy


@dataclass
class Cost:
    agents: int
    candidates: int
    observe_us: float
    scores_after_observe_us: float
    scores_repeated_us: float
    lru_scores_us: float


def costs(agents: int, warmup: list[AgentEvent], stream: list[AgentEvent],
          pool: dict[int, list[Cached]], repeat: int) -> list[Cost]:
    observe_s = observe_seconds(warmup, stream, repeat)
    return [_cost(agents, warmup, stream, pool[n], repeat, observe_s) for n in pool]


def observe_seconds(warmup: list[AgentEvent], stream: list[AgentEvent], repeat: int) -> float:
    """Seconds per ``observe``: each repeat on a fresh policy trained on ``warmup``, so
    every repeat starts from the same model state."""
    times = []
    for _ in range(repeat):
        policy = trained(warmup)
        times.append(seconds(partial(_observe, policy, stream)))
    return statistics.median(times) / len(stream)


def _observe(policy: CacheSage, stream: list[AgentEvent]) -> None:
    for event in stream:
        policy.observe(event)


def _observe_and_score(policy: CacheSage, stream: list[AgentEvent],
                       cached: list[Cached]) -> None:
    for event in stream:
        policy.observe(event)
        policy.keep_scores(cached)


def _cost(agents: int, warmup: list[AgentEvent], stream: list[AgentEvent],
          cached: list[Cached], repeat: int, observe_s: float) -> Cost:
    n = len(stream)
    both = []
    for _ in range(repeat):
        policy = trained(warmup)
        both.append(seconds(partial(_observe_and_score, policy, stream, cached)) / n)
    policy, lru = trained(warmup + stream), LeastRecentlyUsed()
    policy.keep_scores(cached)  # the memo filled
    repeated = median_us(repeat, n, lambda: _score_many(policy.keep_scores, cached, n))
    lru_us = median_us(repeat, n, lambda: _score_many(lru.keep_scores, cached, n))
    return Cost(agents, len(cached), observe_s * 1e6,
                (statistics.median(both) - observe_s) * 1e6, repeated, lru_us)


def _score_many(score: Callable[[Sequence[Cached]], object], cached: list[Cached],
                n: int) -> None:
    for _ in range(n):
        score(cached)


# ---------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------
@dataclass
class State:
    agents: int
    transitions_kept: int
    compact_bytes: int
    python_bytes: int      # allocated by orla_sdk/agents/ code, memo included
    memo_bytes: int        # of which the survival memo
    python_bytes_all: int  # allocated by anything
    lru_bytes: int = 0



def verdict(size: int) -> str:
    return "PASS" if size < TARGET_BYTES else "MISS"


AGENTS_CODE = f"*{os.sep}orla_sdk{os.sep}agents{os.sep}*"


def state(agents: int, warmup: list[AgentEvent], probe: list[Cached]) -> State:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        policy = trained(warmup)
        learned = tracemalloc.take_snapshot()
        policy.keep_scores(probe)  # as in use: the survival memo of the live runs filled
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    model = policy.models[WORKLOAD]
    return State(agents, sum(len(row) for row in model.successors.values()),
                 sum(policy.state_bytes().values()), grown(before, after),
                 grown(learned, after), grown(before, after, everything=True))


def grown(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, *,
          everything: bool = False) -> int:
    """Bytes allocated between the snapshots and still held: by ``orla_sdk/agents/``'s
    code, or by anything."""
    if not everything:
        ours = [tracemalloc.Filter(True, AGENTS_CODE)]
        before, after = before.filter_traces(ours), after.filter_traces(ours)
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


# ---------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------
def cost_lines(found: list[Cost]) -> list[str]:
    lines = ["| agents | candidates | CacheSage observe µs | keep_scores after observe µs | "
             "keep_scores repeated µs | LRU keep_scores µs | after observe / LRU |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for c in found:
        lines.append(f"| {c.agents} | {c.candidates} | {c.observe_us:.2f} | "
                     f"{c.scores_after_observe_us:.2f} | {c.scores_repeated_us:.2f} | "
                     f"{c.lru_scores_us:.2f} | "
                     f"{c.scores_after_observe_us / c.lru_scores_us:.1f}x |")
    return lines


def state_lines(found: list[State]) -> list[str]:
    lines = ["| agents | successors kept | compact state bytes | Python bytes (tracemalloc, "
             "orla_sdk/agents) | of which survival memo | Python bytes (all) | LRU bytes | "
             "compact < 20 KB | Python < 20 KB |", "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for s in found:
        lines.append(f"| {s.agents} | {s.transitions_kept:,} | {s.compact_bytes:,} | "
                     f"{s.python_bytes:,} | {s.memo_bytes:,} | {s.python_bytes_all:,} | "
                     f"{s.lru_bytes} | {verdict(s.compact_bytes)} | "
                     f"{verdict(s.python_bytes)} |")
    return lines


def report_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    return [
        "# CacheSage: cost per decision and policy state", "",
        f"Machine: {m['platform']}; {m['cpu']}, {m['cores']} cores; {m['python']}; "
        f"orla {m['orla']}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['load_average'])}.",
        f"Seed {SEED}; {SUCCESSORS} likely successors an agent ({LIKELY_SHARE:.0%} of "
        f"hand-overs, Pareto {PARETO_ALPHA} weights); {LIVE_RUNS} live runs of "
        f"{RUN_STEPS} calls; warm-up {WARMUP_PER_AGENT} calls an agent; {report['calls']} "
        f"timed calls; median of {report['repeat']} repeats; {report['timestamp']}.", "",
        "## Cost per call (µs)", "",
        *cost_lines([Cost(**c) for c in report["costs"]]), "",
        f"## Policy state per workload (target < {TARGET_BYTES:,} bytes)", "",
        *state_lines([State(**s) for s in report["states"]]), ""]


def measure(agents: int, calls: int, repeat: int) -> tuple[list[Cost], State]:
    rng = random.Random(SEED + agents)
    workload = chain(agents, rng)
    warmup = warmup_stream(workload, rng)
    runs = live_runs(warmup)
    stream = timed_stream(workload, runs, calls, rng)
    pool = {n: candidates(workload, runs, n, rng) for n in CANDIDATE_COUNTS}
    found_state = state(agents, warmup, pool[max(CANDIDATE_COUNTS)])
    return costs(agents, warmup, stream, pool, repeat), found_state


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agent_policy_cost",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"repeats per measure, the median kept (default {DEFAULT_REPEAT})")
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS,
                        help=f"timed calls per repeat (default {DEFAULT_CALLS})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the results (default benchmarks/results/agent_cache/)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.calls < 1:
        parser.error("--repeat and --calls must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    machine = describe_machine()
    machine["load_average"] = list(os.getloadavg())
    started = time.perf_counter()
    found_costs: list[Cost] = []
    found_states: list[State] = []
    for agents in AGENT_COUNTS:
        agent_costs, agent_state = measure(agents, args.calls, args.repeat)
        found_costs += agent_costs
        found_states.append(agent_state)
    report = {"machine": machine, "repeat": args.repeat, "calls": args.calls,
              "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
              "costs": [asdict(c) for c in found_costs],
              "states": [asdict(s) for s in found_states],
              "wall_s": round(time.perf_counter() - started, 1)}
    lines = report_lines(report)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy_cost.json").write_text(json.dumps(report, indent=2) + "\n",
                                               encoding="utf-8")
    (args.out / "policy_cost.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"Results written to {args.out / 'policy_cost.json'} and .md "
          f"({report['wall_s']} s)")


if __name__ == "__main__":
    main()
