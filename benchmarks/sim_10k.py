"""10,000 concurrent customer-support workflows on the simulator, in simulated time.

    python -m benchmarks.sim_10k [--workflows 10000] [--bodies sync|async] [--threads N]
                                 [--tracemalloc] [--profile] [--gc serving|python] [--out DIR]
    python -m benchmarks.sim_10k --workflows 200      # smoke run, a few seconds

The customer-support workflow of ``examples/customer_support.py`` is compiled with its two
logical models switched to simulated engines: ``light`` on ``edge`` (Qwen3-4B on an H100)
and ``heavy`` on ``datacenter`` (Qwen3-8B on an H100), keeping the example's parameters.
Both are declared with ``orla.backends.simulator(..., clock="virtual")`` and built by the
pool, which gives them its one ``VirtualClock`` (``pool.clock``), so simulated time is
consistent across them. All workflows start at once, as ``orla.arun`` tasks on one pool,
each with its own ticket.

``--bodies sync`` (the default) runs the example's stages as written: plain functions
calling ``orla.generate``, which orla runs on its event loop's thread, each in a greenlet
that steps aside while its model call is awaited (``orla_sdk.runtime.bodies``); a body
that blocks would move to the pool's body threads (``BackendPool(..., body_threads=N)``,
``--threads N``). The example's sync tools run on the pool's own tool threads.
``--bodies async`` runs an async twin of the workflow (the same prompts and options
through ``orla.agenerate``).

``--profile`` runs the workflows a second time under cProfile, with the garbage collector
off, and splits the first run's CPU time between the collector (as timed there), orla,
the simulator, the workflow's own code and the rest (asyncio, the standard library), with
orla's CPU per model call.

The time Python's cyclic garbage collector takes is reported apart: 10,000 workflows in
flight hold millions of objects, which every full collection walks. By default the
collector is tuned as a server tunes it, with ``orla_sdk.runtime.tune_gc_for_serving()``
(start-up frozen out of its scans, young collections every 100,000 allocations, middle ones
every 100 young ones); ``--gc python`` keeps Python's own settings, to show what that costs.

Reported: wall time, simulated makespan, stage runs and model calls per wall second,
per-stage simulated latency, pre-engine wait and engine TTFT (p50/p99), orla's recorded
queue wait, peak memory (``ru_maxrss``; the tracemalloc peak with ``--tracemalloc``) and
the engines' counters. Results go to
``<out>/sim_10k[_n<N>][_async][_t<threads>][_gcpython].json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import os
import pstats
import resource
import sys
import threading
import time
import tracemalloc
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orla_sdk as orla
from benchmarks.compile_speed import describe_machine
from examples import customer_support as cs
from orla_sdk.backends.sim.clock import VirtualClock
from orla_sdk.backends.sim.engine import SimEngine

DEFAULT_WORKFLOWS = 10_000
DEFAULT_OUT = Path(__file__).parent / "results"
PROFILE_TOP = 30
PROGRESS_EVERY_S = 15.0
CHECK_EVERY_S = 1.0
STALL_S = 30.0

LIGHT = ("edge", "qwen3-4b")
HEAVY = ("datacenter", "qwen3-8b")
STAGES = ["classify", "policy_check", "route_ticket", "acknowledge", "reply"]


# ---------------------------------------------------------------------------------
# The workflow on simulators
# ---------------------------------------------------------------------------------
def sim_backends() -> list[orla.ir.BackendSpec]:
    return [orla.backends.simulator(name, profile, clock="virtual")
            for name, profile in (LIGHT, HEAVY)]


def sim_mapping() -> dict[str, orla.Target]:
    """The example's mapping with the engines swapped: same logical names and params."""
    mapping = {}
    for logical, (backend, profile) in (("light", LIGHT), ("heavy", HEAVY)):
        target = cs.MAPPING[logical]
        assert isinstance(target, orla.Target)
        mapping[logical] = orla.Target(backend=backend, model=profile,
                                       params=dict(target.params))
    return mapping


# The async twin: the example's stages with the same prompts and options, through
# orla.agenerate. Keep it in step with examples/customer_support.py.
@orla.stage(model="light", name="classify")
async def classify(ticket: str) -> cs.Triage:
    return await orla.agenerate(
        "Read the support ticket and fill in the triage: its category, the product, the "
        f"issue, what the customer asks for, and whether a human must take over.\n\n{ticket}",
        output=cs.Triage, max_tokens=300, temperature=0)


@orla.stage(model="heavy", tools=[cs.read_policy_yaml], priority=cs.URGENCY,
            name="policy_check")
async def policy_check(t: cs.Triage, ticket: str) -> str:
    return await orla.agenerate(
        f"A {t.category} ticket about {t.product}: {t.issue}. Look up the policy for its "
        f"category, then say in one sentence what the policy allows.\n\n{ticket}",
        max_tokens=120, max_turns=2)


@orla.stage(model="heavy", tools=[cs.read_team_descriptions], priority=cs.URGENCY,
            name="route_ticket")
async def route_ticket(t: cs.Triage) -> str:
    return await orla.agenerate(
        f"Which support team should own a {t.category} ticket about {t.product} "
        f"({t.issue})? Look at the team descriptions, then name one team.",
        max_tokens=80, max_turns=2)


@orla.stage(model="heavy", tools=[cs.send_email], name="reply")
async def reply(t: cs.Triage, policy: str, team: str) -> str:
    return await orla.agenerate(
        f"Write and send a short email that resolves this request: {t.customer_request}. "
        f"Policy: {policy}. Owner: {team}.", max_tokens=160, max_turns=2)


@orla.stage(model="light", cache="flush", name="acknowledge")
async def acknowledge(t: cs.Triage, team: str) -> str:
    return await orla.agenerate(
        f"Write two sentences telling the customer that the {team} team now handles their "
        f"{t.category} ticket about {t.product}.", max_tokens=80)


@orla.workflow(name="support")
async def support_async(ticket: str = cs.SAMPLE_TICKET) -> str:
    t = classify(ticket)
    policy = policy_check(t, ticket)
    team = route_ticket(t)
    if t.needs_escalation:
        return acknowledge(t, team)
    return reply(t, policy, team)


def compile_plan(bodies: str) -> orla.Plan:
    workflow = cs.support if bodies == "sync" else support_async
    return orla.compile(workflow, backends=sim_backends(), mapping=sim_mapping())


# ---------------------------------------------------------------------------------
# Tickets: varied, so replies, branches and cache hits vary as they would
# ---------------------------------------------------------------------------------
TICKETS = [
    "Hi, I was charged twice for my {plan} subscription this month (order {order}). "
    "Please refund the duplicate charge. - {name}",
    "The {plan} dashboard has been down since this morning, error 502 on login. "
    "We have a demo at 3pm. - {name}",
    "How do I add a second admin to our {plan} account? Order {order}. Thanks, {name}",
    "My invoice {order} lists the {plan} plan but we downgraded last month. "
    "Please fix it. - {name}",
    "Exports from {plan} time out for any report over 10,000 rows since the last "
    "update. - {name}",
    "Please close my {plan} account and delete my data; order {order}. - {name}",
]
NAMES = ["Dana", "Lee", "Priya", "Sam", "Kofi", "Mei", "Jonas", "Ana", "Omar", "Eva", "Ravi"]
PLANS = ["Pro", "Team", "Basic", "Enterprise"]


def ticket(number: int) -> str:
    return TICKETS[number % len(TICKETS)].format(
        plan=PLANS[number % len(PLANS)], order=4000 + number,
        name=f"{NAMES[number % len(NAMES)]}, customer {number}")


# ---------------------------------------------------------------------------------
# Simulated times, read from the run's events
# ---------------------------------------------------------------------------------
class SimTimes:
    """Per stage: simulated latency (start to end) and the simulated wait before each
    request reaches its engine (orla's queue, tool runs and, for sync bodies, waiting
    for a thread), from the stage's start or the end of its previous call."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.started: dict[tuple[str, str, Any], float] = {}
        self.last: dict[tuple[str, str, Any], float] = {}
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.pre_engine: dict[str, list[float]] = defaultdict(list)
        self.run_ends: list[float] = []
        self.events = 0

    def __call__(self, event: orla.runtime.RunEvent) -> None:
        self.events += 1
        now = self.clock.now()
        if event.kind == "stage_start":
            key = (event.run_id, event.node or "", event.data.get("item"))
            self.started[key] = self.last[key] = now
        elif event.kind == "call":
            key = (event.run_id, event.node or "", event.data.get("item"))
            call = event.data["call"]
            arrival = now - call.duration_s  # the engine's clock when it got the request
            self.pre_engine[event.data["stage"]].append(arrival - self.last.get(key, arrival))
            self.last[key] = now
        elif event.kind == "stage_end":
            record = event.data["record"]
            key = (event.run_id, event.node or "", record.item)
            start = self.started.pop(key, None)
            self.last.pop(key, None)
            if start is not None and record.status == "done":
                self.latency[record.stage].append(now - start)
        elif event.kind == "run_end":
            self.run_ends.append(now)


# ---------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Watch:
    """Progress lines every ``PROGRESS_EVERY_S``, and a stall detector: when no run event
    arrives, no workflow finishes and the simulated clock stands still for ``STALL_S`` of
    wall time, the run is cancelled and reported as stalled."""

    def __init__(self, results: list[Any], times: SimTimes, total: int) -> None:
        self.results = results
        self.times = times
        self.clock = times.clock
        self.total = total
        self.started = time.perf_counter()
        self.stalled: str | None = None

    def done(self) -> int:
        return sum(1 for r in self.results if r is not None)

    async def watch(self, work: asyncio.Future[Any]) -> None:
        last_state, last_change, last_print = (-1, -1.0, -1), time.perf_counter(), 0.0
        while not work.done():
            await asyncio.sleep(CHECK_EVERY_S)
            now = time.perf_counter()
            state = (self.done(), self.clock.now(), self.times.events)
            if state != last_state:
                last_state, last_change = state, now
            elif now - last_change >= STALL_S:
                self.stalled = (f"stalled: {state[0]:,}/{self.total:,} workflows done, the "
                                f"simulated clock stood at {state[1]:.3f} s for "
                                f"{now - last_change:.0f} wall s; "
                                f"{threading.active_count()} threads alive")
                print("  " + self.stalled, file=sys.stderr, flush=True)
                work.cancel()
                return
            if now - last_print >= PROGRESS_EVERY_S:
                last_print = now
                print(f"  ... {now - self.started:.0f} s: {state[0]:,}/{self.total:,} "
                      f"workflows done, simulated {state[1]:.1f} s, "
                      f"{threading.active_count()} threads", file=sys.stderr, flush=True)


async def run_all(plan: orla.Plan, workflows: int, threads: int | None) -> dict[str, Any]:
    pool = (orla.BackendPool(plan.backends, body_threads=threads) if threads
            else orla.BackendPool(plan.backends))
    await pool.start()
    clock = pool.clock
    engines = {}
    for name, _ in (LIGHT, HEAVY):
        engine = pool[name].client
        assert isinstance(engine, SimEngine) and engine.clock is clock, name
        engines[name] = engine
    times = SimTimes(clock)
    results: list[Any] = [None] * workflows

    async def one(number: int) -> None:
        try:
            results[number] = await orla.arun(plan, pool=pool, run_id=f"wf{number:05d}",
                                              on_event=times, ticket=ticket(number))
        except Exception as exc:  # arun reports stage failures; anything else lands here
            results[number] = exc

    rss_before = maxrss_mib()
    sim_start = clock.now()
    watch = Watch(results, times, workflows)
    started = time.perf_counter()
    work = asyncio.gather(*(one(n) for n in range(workflows)))
    watcher = asyncio.create_task(watch.watch(work))
    try:
        await work
    except asyncio.CancelledError:
        if watch.stalled is None:
            raise
    watcher.cancel()
    wall = time.perf_counter() - started
    makespan = clock.now() - sim_start
    metrics = {name: engine.metrics_now() for name, engine in engines.items()}
    pool_threads = {"body_threads": pool.body_executor._max_workers,
                    "tool_threads": pool.tool_threads}
    threads_alive = threading.active_count()
    pool_settings = {name: {"queue_limit": pool[name].queue.limit,
                            "cache_control": name in pool.memory.shared}
                     for name in engines}
    await pool.aclose()
    return {"results": results, "times": times, "wall_s": wall, "makespan_s": makespan,
            "first_done_s": min(times.run_ends, default=math.nan) - sim_start,
            "sim_start": sim_start, "metrics": metrics, **pool_threads,
            "pool_settings": pool_settings, "rss_before_mib": rss_before,
            "threads_at_end": threads_alive, "stalled": watch.stalled}


def summarize(run: dict[str, Any], workflows: int) -> dict[str, Any]:
    results = run["results"]
    ok = [r for r in results if isinstance(r, orla.RunResult) and r.ok]
    errors = Counter(str(r.error) if isinstance(r, orla.RunResult)
                     else "did not finish" if r is None else repr(r)
                     for r in results if not (isinstance(r, orla.RunResult) and r.ok))
    stage_runs = calls = 0
    per_stage: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    cache_actions: Counter[str] = Counter()
    branches: Counter[str] = Counter()
    for result in results:
        if not isinstance(result, orla.RunResult):
            continue
        branches.update(str(v) for v in result.branches.values())
        for entry in result.cache_log:
            cache_actions[f"{entry['decision']}: {entry['action'].split(':')[0].split(' (')[0]}"] \
                += 1
        for record in result.stages:
            if record.status != "done":
                continue
            stage_runs += 1
            calls += len(record.calls)
            numbers = per_stage[record.stage]
            numbers["calls"].append(len(record.calls))
            numbers["ttft"] += [c.ttft_s for c in record.calls]
            numbers["queue_wall"] += [c.queue_wait_s for c in record.calls]
    times: SimTimes = run["times"]
    stages = []
    for stage in STAGES:
        numbers = per_stage.get(stage)
        if not numbers:
            continue
        row: dict[str, Any] = {"stage": stage, "runs": len(numbers["calls"]),
                               "calls": int(sum(numbers["calls"]))}
        for label, values in (("latency_sim_s", times.latency[stage]),
                              ("pre_engine_wait_sim_s", times.pre_engine[stage]),
                              ("ttft_sim_s", numbers["ttft"]),
                              ("queue_wait_wall_s", numbers["queue_wall"])):
            row[label] = {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}
        stages.append(row)
    engines = {}
    for name, m in run["metrics"].items():
        prompt = m["prompt_tokens_total"] + m["prompt_tokens_cached_total"]
        engines[name] = {**m, "cached_fraction": m["prompt_tokens_cached_total"] / max(prompt, 1)}
    wall = run["wall_s"]
    return {
        "workflows": workflows, "ok": len(ok), "failed": workflows - len(ok),
        "stalled": run["stalled"],
        "errors": [{"error": e, "count": n} for e, n in errors.most_common(10)],
        "wall_s": wall, "makespan_sim_s": run["makespan_s"],
        "first_workflow_done_sim_s": run["first_done_s"],
        "stage_runs": stage_runs, "model_calls": calls,
        "stage_runs_per_wall_s": stage_runs / wall, "model_calls_per_wall_s": calls / wall,
        "workflows_per_wall_s": workflows / wall,
        "sim_speedup": run["makespan_s"] / wall,
        "stages": stages, "engines": engines,
        "cache_actions": dict(cache_actions.most_common()),
        "branches": dict(branches),
        "threads": {"body_threads": run["body_threads"], "tool_threads": run["tool_threads"],
                    "alive_at_end": run["threads_at_end"]},
        "pool_settings": run["pool_settings"],
        "memory": {"maxrss_before_mib": run["rss_before_mib"], "maxrss_peak_mib": maxrss_mib()},
    }


# ---------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------
CPU_PARTS = {"orla": "orla (its runtime, outside the simulator)",
             "simulator": "the simulated engines (orla_sdk/backends/sim)",
             "workflow": "the workflow's own code (its stage bodies and tools)",
             "rest": "asyncio, the standard library and the rest"}
GC_PART = "Python's garbage collector (timed in the unprofiled run)"


def cpu_part(filename: str) -> str:
    if "/orla_sdk/backends/sim/" in filename:
        return "simulator"
    if "/orla_sdk/" in filename:
        return "orla"
    if "/examples/" in filename or "/benchmarks/" in filename:
        return "workflow"
    return "rest"


def cpu_split(stats: pstats.Stats, cpu_s: float, gc_s: float, calls: int) -> dict[str, Any]:
    """Each part's share of the unprofiled run's CPU time and its CPU per model call. The
    garbage collector's time (``gc_s``, measured in that run) is a part of its own: it
    walks every part's objects, and whichever function happened to allocate when it
    started would be charged with it. The rest is split by the parts' shares of the
    profiled run's own time, taken with the collector off (a built-in function's time goes
    to the part that called it)."""
    seconds: Counter[str] = Counter()
    for (filename, _, _), (_, _, own, _, callers) in stats.stats.items():
        if filename == "~":
            for (caller_file, _, _), caller_times in callers.items():
                seconds[cpu_part(caller_file)] += caller_times[2]
        else:
            seconds[cpu_part(filename)] += own
    total = sum(seconds.values()) or 1.0
    part_s = {part: seconds[part] / total * (cpu_s - gc_s) for part in CPU_PARTS}
    part_s["gc"] = gc_s
    return {part: {"share": spent / max(cpu_s, 1e-9), "us_per_call": spent / max(calls, 1) * 1e6}
            for part, spent in part_s.items()}


def ms(value: float | None) -> str:
    return "" if value is None else f"{value * 1000:,.1f}"


def report_lines(report: dict[str, Any]) -> list[str]:
    m, s = report["machine"], report["summary"]
    body, tool = s["threads"]["body_threads"], s["threads"]["tool_threads"]
    body_note = (f"{body} body threads (--threads {body})" if report["threads_arg"]
                 else f"{body} body threads (the pool's default)")
    bodies = ("sync stage bodies as in the example, in greenlets on the event loop's thread "
              f"({body_note} for bodies that block); sync tools on its {tool} tool threads"
              if report["bodies"] == "sync"
              else "async twin of the example (orla.agenerate); the example's sync tools on "
                   f"the pool's {tool} tool threads")
    limits = ", ".join(f"{name} {p['queue_limit']:,}"
                       + ("" if p["cache_control"] else " (no cache control)")
                       for name, p in s["pool_settings"].items())
    lines = [
        f"## {s['workflows']:,} concurrent customer-support workflows on the simulator",
        "",
        f"Machine: {m['platform']}; {m['cpu']}, {m['cores']} cores; {m['python']}; "
        f"orla {m['orla']}; load average at start {' '.join(map(str, m['load_average']))}, "
        f"at end {' '.join(map(str, m['load_average_end']))}; {report['timestamp']}.",
        f"Backends: light -> edge (simulated Qwen3-4B on H100), heavy -> datacenter "
        f"(simulated Qwen3-8B on H100), built by the pool on its shared VirtualClock; "
        f"queue limits {limits}. Bodies: {bodies}.",
        f"Compile: {report['compile_ms']:.1f} ms."
        + (" tracemalloc was on (it slows Python down)." if report["tracemalloc"] else ""),
        "",
        f"**Completed: {s['ok']:,} / {s['workflows']:,} ok, {s['failed']:,} failed"
        + (f"; the run {s['stalled']}" if s["stalled"] else "") + ".**",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| wall time | {s['wall_s']:.1f} s |",
        f"| simulated makespan | {s['makespan_sim_s']:.1f} s |",
        f"| first workflow done (simulated) | {s['first_workflow_done_sim_s']:.2f} s |",
        f"| simulated / wall time | {s['sim_speedup']:.2f}x |",
        f"| stage runs | {s['stage_runs']:,} ({s['stage_runs_per_wall_s']:,.0f} per wall s) |",
        f"| model calls | {s['model_calls']:,} ({s['model_calls_per_wall_s']:,.0f} per wall s) |",
        f"| workflows per wall second | {s['workflows_per_wall_s']:,.0f} |",
        f"| peak RSS (ru_maxrss) | {s['memory']['maxrss_peak_mib']:,.0f} MiB "
        f"(before the workflows: {s['memory']['maxrss_before_mib']:,.0f} MiB) |",
    ]
    if "tracemalloc_peak_mib" in s["memory"]:
        lines.append(f"| tracemalloc peak | {s['memory']['tracemalloc_peak_mib']:,.0f} MiB |")
    lines.append(f"| threads alive at the end | {s['threads']['alive_at_end']} |")
    lines.append(f"| process CPU time | {s['cpu_s']:.1f} s "
                 f"({s['cpu_s'] / max(s['model_calls'], 1) * 1e6:,.0f} µs per model call) |")
    collected = s["gc"]
    lines.append(f"| garbage collector ({collected.get('settings', 'python')} settings, "
                 f"thresholds {tuple(collected['threshold'])}) | "
                 f"{collected['seconds']:.1f} s in {collected['collections']:,} collections "
                 f"({collected['seconds'] / s['wall_s']:.0%} of the wall time), "
                 f"{collected['full_seconds']:.1f} s of it in {collected['full_collections']} "
                 "full ones |")
    if "cpu_split" in s:
        lines += ["", "Where the CPU goes (the unprofiled run's CPU time: the collector's as "
                  "timed, the rest split by the shares of a profiled second run of the same "
                  "workflows with the collector off):", "",
                  "| part | share | µs per model call |", "|---|---:|---:|"]
        lines += [f"| {CPU_PARTS.get(part, GC_PART)} | {v['share']:.0%} | "
                  f"{v['us_per_call']:,.1f} |" for part, v in s["cpu_split"].items()]
    lines += ["", "Per stage (simulated ms unless marked wall; p50 / p99):", "",
              "| stage | runs | calls | latency | wait before engine | engine TTFT | "
              "orla queue wait (wall ms, as recorded) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for row in s["stages"]:
        cells = [f"{ms(row[k]['p50'])} / {ms(row[k]['p99'])}" for k in
                 ("latency_sim_s", "pre_engine_wait_sim_s", "ttft_sim_s", "queue_wait_wall_s")]
        lines.append(f"| {row['stage']} | {row['runs']:,} | {row['calls']:,} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Engines (their own counters):", "",
              "| engine | requests | steps | prompt tokens prefilled | cached | cached share | "
              "generated tokens | KV tokens held at end |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in s["engines"].items():
        lines.append(f"| {name} | {e['requests_finished_total']:,.0f} | "
                     f"{e['n_decode_total']:,.0f} | {e['prompt_tokens_total']:,.0f} | "
                     f"{e['prompt_tokens_cached_total']:,.0f} | {e['cached_fraction']:.0%} | "
                     f"{e['tokens_predicted_total']:,.0f} | {e['kv_cache_tokens']:,.0f} |")
    lines += ["", "Cache decisions and actions: " + "; ".join(
        f"{k} x{v:,}" for k, v in s["cache_actions"].items()),
        "Branch choices (needs_escalation): " + ", ".join(
            f"{k} x{v:,}" for k, v in s["branches"].items())]
    if s["errors"]:
        lines += ["", "Errors:", ""] + [f"- {e['count']} x {e['error']}" for e in s["errors"]]
    return lines


def plot(run: dict[str, Any], title: str, path: Path) -> None:
    """Workflows finished over simulated time, and each stage's simulated latency CDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times: SimTimes = run["times"]
    figure, (done_ax, stage_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    ends = sorted(t - run["sim_start"] for t in times.run_ends)
    done_ax.step(ends, range(1, len(ends) + 1), where="post")
    done_ax.set_xlim(left=0)
    done_ax.set_xlabel("simulated time (s)")
    done_ax.set_ylabel("workflows finished")
    done_ax.set_title("workflows finished over simulated time", fontsize=10)
    for stage in STAGES:
        latencies = sorted(times.latency.get(stage, []))
        if latencies:
            stage_ax.step(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))],
                          where="post", label=stage)
    stage_ax.set_xscale("log")
    stage_ax.set_xlabel("stage latency, start to end (simulated s, log scale)")
    stage_ax.set_ylabel("fraction of stage runs")
    stage_ax.set_title("stage latency CDF", fontsize=10)
    stage_ax.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------
class GcTime:
    """Seconds the cyclic garbage collector runs, all collections and the full ones, from
    ``gc.callbacks`` (installed while the workflows run). CPU seconds of the collecting
    thread, not wall time: other threads (tools, bodies) may take the GIL while the
    callbacks run, and their time is not the collector's."""

    def __init__(self) -> None:
        self.seconds = self.full_seconds = 0.0
        self.collections = self.full_collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
            return
        spent = time.thread_time() - self._started
        self.seconds += spent
        self.collections += 1
        if info["generation"] == 2:
            self.full_seconds += spent
            self.full_collections += 1

    def __enter__(self) -> GcTime:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def summary(self) -> dict[str, float]:
        return {"seconds": self.seconds, "collections": self.collections,
                "full_seconds": self.full_seconds, "full_collections": self.full_collections}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_10k",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=DEFAULT_WORKFLOWS,
                        help=f"workflows started at once (default {DEFAULT_WORKFLOWS}; "
                             "200 for a smoke run)")
    parser.add_argument("--bodies", choices=["sync", "async"], default="sync",
                        help="the example's sync stage bodies (default) or their async twin")
    parser.add_argument("--threads", type=int, default=0,
                        help="the pool's body threads, which run sync stage bodies that block: "
                             "BackendPool(..., body_threads=N) (default 0: the pool's default)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace Python allocations for a peak (slower)")
    parser.add_argument("--profile", action="store_true",
                        help="run again under cProfile: the CPU split and the top "
                             f"{PROFILE_TOP} functions")
    parser.add_argument("--gc", choices=["serving", "python"], default="serving",
                        help="the garbage collector while the workflows run: tuned as a "
                             "server tunes it, orla_sdk.runtime.tune_gc_for_serving() "
                             "(default), or Python's own settings")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the results (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.workflows < 1 or args.threads < 0:
        parser.error("--workflows must be at least 1, --threads at least 0")
    return args


def result_name(args: argparse.Namespace) -> str:
    """sim_10k, with _n<workflows>, _async and _t<threads> where they differ from the
    defaults, so that runs of different settings keep their own files."""
    return ("sim_10k" + (f"_n{args.workflows}" if args.workflows != DEFAULT_WORKFLOWS else "")
            + ("_async" if args.bodies == "async" else "")
            + (f"_t{args.threads}" if args.threads else "")
            + ("_gcpython" if args.gc == "python" else ""))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = describe_machine()
    machine["load_average"] = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    plan = compile_plan(args.bodies)
    compile_ms = (time.perf_counter() - started) * 1000
    print(f"{args.workflows:,} workflows, {args.bodies} bodies, threads="
          f"{args.threads or 'default'}: starting", file=sys.stderr, flush=True)
    gc.collect()
    if args.tracemalloc:
        tracemalloc.start()
    if args.gc == "serving":
        orla.runtime.tune_gc_for_serving()
    cpu_started = time.process_time()
    with GcTime() as collector:
        run = asyncio.run(run_all(plan, args.workflows, args.threads or None))
    cpu_s = time.process_time() - cpu_started
    summary = summarize(run, args.workflows)
    summary["cpu_s"] = cpu_s
    summary["gc"] = {**collector.summary(), "settings": args.gc, "threshold": gc.get_threshold()}
    profiler = None
    if args.profile:  # a second run of the same workflows, profiled, for the CPU split
        profiler = cProfile.Profile()
        gc.disable()  # its time is measured above; here it would land on random functions
        profiler.enable()
        asyncio.run(run_all(plan, args.workflows, args.threads or None))
        profiler.disable()
        gc.enable()
        summary["cpu_split"] = cpu_split(pstats.Stats(profiler), cpu_s,
                                         summary["gc"]["seconds"], summary["model_calls"])
    if args.tracemalloc:
        summary["memory"]["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"machine": machine, "bodies": args.bodies, "threads_arg": args.threads,
              "tracemalloc": args.tracemalloc, "compile_ms": compile_ms,
              "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
              "summary": summary}
    text = "\n".join(report_lines(report))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = result_name(args)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n",
                                           encoding="utf-8")
    (args.out / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    threads = "greenlets" if args.bodies == "sync" else "async"
    plot(run, f"{args.workflows:,} customer-support workflows, {args.bodies} bodies "
              f"({threads}); wall {summary['wall_s']:.0f} s", args.out / f"{name}.png")
    print(f"\nResults written to {args.out / name}.json, .md and .png")
    if profiler is not None:
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).strip_dirs()
        stats.sort_stats("tottime").print_stats(PROFILE_TOP)
        stats.sort_stats("cumulative").print_stats(PROFILE_TOP)
        (args.out / f"{name}_profile.txt").write_text(stream.getvalue(), encoding="utf-8")
        print(stream.getvalue())
    if summary["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
