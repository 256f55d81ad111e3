"""A LangGraph app run bare against the same app served by orla (``orla.serve(graph)``).

    python -m benchmarks.langgraph_serve [--measure both|load|overhead] [--conversations 16]
                                         [--turns 3] [--rounds 2] [--light-slots 16]
                                         [--repeat 200] [--out DIR] [--profile]

The app is a customer-support ``StateGraph`` whose nodes call LangChain ``ChatOpenAI``:
``classify`` (light model) on every turn, then ``answer`` (heavy model), or ``summarize``
(light model) on the turn that closes the conversation. Every prompt starts with the same
support policy (about 730 tokens) as its system message, then the thread's messages,
which a checkpointer accumulates turn after turn. Nodes carry
``metadata={"orla": {"model": "light" | "heavy"}}``.

Why the comparison is fair: both ways go over HTTP to the same kind of server, orla's
simulator behind an OpenAI-compatible surface (``sim_http.serve_http``), each engine in a
process of its own as a real one is. The light one imitates llama.cpp: ``--light-slots``
slots holding one sequence each, a request without ``id_slot`` given the slot llama.cpp
would give it (the most similar idle one, else the least recently used), and slot save
and restore. The heavy one imitates vLLM (one shared prefix cache).
Bare, the nodes' ``ChatOpenAI`` clients call those servers themselves; served, orla routes
the same calls to ``orla.backends.llamacpp("light", url)`` and ``orla.backends.vllm("heavy",
url)`` at the same URLs. Both send the same messages, model names and token limits, so the
simulator writes the same replies: the benchmark checks that every final state matches.
Setup (servers, graphs, ``orla.serve`` and its session start) is not timed.

Two measures, each interleaving bare and served runs in one process (the order rotates
every round):

- **load**: ``--conversations`` threads, each invoked for ``--turns`` turns, all at once
  from a thread pool calling the sync ``invoke``. Sync nodes calling ``ChatOpenAI.invoke``
  are how LangGraph apps are usually written (orla's own example and tests), and it is the
  path where orla hands each call from the caller's thread to its event loop. Light is
  the ``smollm2-135m`` profile (fitted to llama.cpp on a 2-core CPU) with
  ``--light-slots`` slots, heavy the ``qwen3-8b`` profile (an H100), both on the real
  clock. Every run, bare or served, gets a fresh pair of servers, so no run finds a
  cache another run warmed. Served, each conversation ends with ``app.end_thread``.
  Reported: wall time per round and its median, served / bare, and the share of prompt
  tokens found cached, from the engines' counters for both ways.
- **overhead**: both servers on the zero-cost ``instant`` profile; one thread-less
  invocation at a time (two model calls), ``--repeat`` per measure after a warm-up,
  interleaved invocation by invocation, ``gc.collect()`` before each. A served
  invocation's run ends after it returns (``end_soon``: its cache actions); that is waited
  for, untimed, so that it lands on no other invocation's clock. A third measure,
  the bare app with streaming clients, shows what streaming from the same server costs.

With ``--profile``, ``PROFILE_RUNS`` served invocations of the overhead app
are profiled with cProfile in the caller's thread and in the serving session's event-loop
thread, and as many bare ones. Results: ``<out>/langgraph_serve[_<options>].json`` and
``.md`` (and ``_profile.txt``).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import multiprocessing
import os
import pstats
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph, add_messages

import orla_sdk as orla
from benchmarks.compile_speed import describe_machine
from benchmarks.overhead import percentile
from orla_sdk.backends.sim import http as sim_http
from orla_sdk.backends.sim.engine import SimEngine
from orla_sdk.backends.sim.tokens import tokenize

DEFAULT_CONVERSATIONS = 16
DEFAULT_TURNS = 3
DEFAULT_ROUNDS = 2
DEFAULT_REPEAT = 200
DEFAULT_LIGHT_SLOTS = 16  # llama.cpp's -np: one slot per conversation by default
WARMUP = 20
PROFILE_RUNS = 200
PROFILE_TOP = 25
DEFAULT_OUT = Path(__file__).parent / "results"

LIGHT_MODEL, HEAVY_MODEL = "smollm2-135m", "qwen3-8b"
CLASSIFY_TOKENS, ANSWER_TOKENS, SUMMARY_TOKENS = 4, 48, 24


# ---------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------
def _policy() -> str:
    """About 700 tokens (by the simulator's tokenizer) of support policy: the system
    prompt every call starts with."""
    rules = [
        "Greet the customer by name when it is known and keep a calm, respectful tone.",
        "Never ask for a full card number, a password or a one-time code.",
        "Refunds for duplicate charges are issued within five business days of approval.",
        "A refund above two hundred dollars needs the approval of a billing lead.",
        "Orders can be cancelled free of charge until they leave the warehouse.",
        "Late deliveries of more than seven days earn a shipping credit of ten dollars.",
        "Damaged items are replaced at no cost once the customer sends a photo.",
        "Account locks after five failed logins clear by themselves after thirty minutes.",
        "Two-factor resets need the account email and the last four digits on file.",
        "Subscriptions renew monthly; a cancellation takes effect at the end of the period.",
        "Students and non-profits get a twenty percent discount with proof of status.",
        "Escalate threats, legal claims and data-protection requests to a human at once.",
        "Outages are listed on the status page; link it instead of guessing a cause.",
        "Offer a callback when a problem needs more than three messages to resolve.",
        "Summaries list the issue, what was done and what the customer still expects.",
        "Do not promise dates that the policy does not allow; say what happens next.",
    ]
    lines = ["You are the support assistant of an online store. Follow this policy."]
    for number, section in enumerate(["Orders and billing", "Accounts and support"], 1):
        lines.append(f"{section} policy:")
        lines += [f"{number}.{i} {rule}" for i, rule in enumerate(rules, 1)]
    return "\n".join(lines)


POLICY = _policy()
CLASSIFY = ("Classify the customer's latest message as billing, shipping, account or "
            "technical. Answer with one word.")
SUMMARIZE = "Summarize this conversation for the ticket history in two sentences."
ISSUES = [
    "I was charged twice for order {n} and I would like one charge refunded.",
    "My parcel for order {n} is a week late and the tracking page has not moved.",
    "I cannot log in since this morning; the site says my account {n} is locked.",
    "The app crashes whenever I open my order history on my phone (order {n}).",
]
DETAILS = [
    "The two charges are both on my statement from Monday, same amount.",
    "The tracking number ends in {n}; the last scan was at the regional hub.",
    "I did reset my password once, but I never received the reset email.",
    "It happens on version 4.2 of the app; reinstalling did not help.",
]
CLOSING = "Thanks, that answers it. Please note it on the ticket."


class Support(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    closing: bool
    label: str
    summary: str


def build_graph(light: ChatOpenAI, heavy: ChatOpenAI, *, checkpointer: Any = None) -> Any:
    """The support app; ``light`` and ``heavy`` are the clients its nodes call."""
    system = SystemMessage(POLICY)

    def classify(state: Support) -> Support:
        reply = light.invoke([system, *state["messages"], HumanMessage(CLASSIFY)],
                             max_tokens=CLASSIFY_TOKENS)
        return {"label": str(reply.content)}

    def answer(state: Support) -> Support:
        reply = heavy.invoke([system, *state["messages"]], max_tokens=ANSWER_TOKENS)
        return {"messages": [reply]}

    def summarize(state: Support) -> Support:
        reply = light.invoke([system, *state["messages"], HumanMessage(SUMMARIZE)],
                             max_tokens=SUMMARY_TOKENS)
        return {"summary": str(reply.content)}

    def route(state: Support) -> str:
        return "summarize" if state.get("closing") else "answer"

    graph = StateGraph(Support)
    graph.add_node("classify", classify, metadata={"orla": {"model": "light"}})
    graph.add_node("answer", answer, metadata={"orla": {"model": "heavy"}})
    graph.add_node("summarize", summarize, metadata={"orla": {"model": "light"}})
    graph.add_edge(START, "classify")
    graph.add_conditional_edges("classify", route, ["answer", "summarize"])
    graph.add_edge("answer", END)
    graph.add_edge("summarize", END)
    return graph.compile(checkpointer=checkpointer)


def clients(light_url: str, heavy_url: str) -> tuple[ChatOpenAI, ChatOpenAI]:
    """The nodes' own clients, straight to the servers. The model names are the
    simulators', so bare and served runs send identical requests."""
    return (ChatOpenAI(model=LIGHT_MODEL, base_url=f"{light_url}/v1", api_key="none",
                       max_retries=0),
            ChatOpenAI(model=HEAVY_MODEL, base_url=f"{heavy_url}/v1", api_key="none",
                       max_retries=0))


def turn_input(conversation: int, turn: int, turns: int) -> Support:
    """What the customer says in ``turn`` of ``conversation``; the last turn closes it."""
    kind, n = conversation % len(ISSUES), 1000 + conversation
    if turn == turns - 1 and turns > 1:
        text = CLOSING
    elif turn == 0:
        text = f"Hello, this is customer {n}. " + ISSUES[kind].format(n=n)
    else:
        text = DETAILS[kind].format(n=n) + f" (message {turn + 1})"
    return {"messages": [HumanMessage(text)], "closing": turn == turns - 1 and turns > 1}


def serve(graph: Any, light_url: str, heavy_url: str) -> Any:
    """``graph`` served by orla on the same two servers; its session started."""
    app = orla.serve(
        graph,
        backends=[orla.backends.llamacpp("light", url=light_url, models=[LIGHT_MODEL]),
                  orla.backends.vllm("heavy", url=heavy_url, models=[HEAVY_MODEL])],
        mapping={"light": orla.Target(backend="light", model=LIGHT_MODEL),
                 "heavy": orla.Target(backend="heavy", model=HEAVY_MODEL)})
    app.session.start()  # connects to the servers (llama.cpp's /slots): setup, not timed
    return app


@dataclass(frozen=True)
class Sim:
    """A simulated engine to serve over HTTP: its profile, name, and slots where it
    imitates llama.cpp (requests that name no slot are given one as llama.cpp does)."""

    profile: str
    name: str
    slots: int | None = None


def _serve_sim(sim: Sim, conn: Connection) -> None:
    """The child process: serve ``sim`` until told to stop, then send its counters."""
    engine = SimEngine(sim.profile, name=sim.name, clock="real", max_batch=sim.slots,
                       assign_slots=sim.slots is not None)
    url, stop = sim_http.serve_http(engine)
    conn.send(url)
    conn.recv()
    conn.send(engine.metrics_now())
    stop()


@contextmanager
def sim_servers(light: Sim, heavy: Sim,
                counters: dict[str, dict[str, float]] | None = None
                ) -> Iterator[tuple[str, str]]:
    """Both engines behind their HTTP servers, each in a process of its own (as a real
    engine is: its work never holds this process's GIL); stopped on exit, when their
    final counters go to ``counters`` by engine name."""
    spawn = multiprocessing.get_context("spawn")
    children = []
    for sim in (light, heavy):
        ours, theirs = spawn.Pipe()
        process = spawn.Process(target=_serve_sim, args=(sim, theirs), daemon=True)
        process.start()
        children.append((sim, process, ours))
    try:
        light_url, heavy_url = (conn.recv() for _, _, conn in children)
        yield light_url, heavy_url
    finally:
        for sim, process, conn in children:
            if process.is_alive():  # one that died has printed why
                conn.send("stop")
                metrics = conn.recv()
                if counters is not None:
                    counters[sim.name] = metrics
            process.join(timeout=10)


def replies(state: Support) -> list[str]:
    """What the models wrote in a final state: the check that both ways did the same work."""
    return [str(m.content) for m in state["messages"]] + [state.get("label", ""),
                                                          state.get("summary", "")]


# ---------------------------------------------------------------------------------
# Measure 1: concurrent multi-turn conversations on the light + heavy simulators
# ---------------------------------------------------------------------------------
BARE, SERVED = "bare", "served"


def engine_counters(m: dict[str, float]) -> dict[str, float]:
    """Requests and prompt tokens as the engine counted them (read once it was idle)."""
    cached, fresh = m["prompt_tokens_cached_total"], m["prompt_tokens_total"]
    return {"requests": m["requests_finished_total"], "prompt_tokens": cached + fresh,
            "cached_tokens": cached, "cached_share": cached / max(cached + fresh, 1),
            "prefill_s": round(m["prompt_seconds_total"], 3)}


def converse(app: Any, conversation: int, turns: int, *, served: bool) -> Support:
    """One conversation: ``turns`` invocations on one thread; served, the thread is then
    ended (``end_thread``: orla drops what the thread holds in the engines)."""
    thread = f"conversation-{conversation}"
    config = {"configurable": {"thread_id": thread}}
    for turn in range(turns):
        state = app.invoke(turn_input(conversation, turn, turns), config)
    if served:
        app.end_thread(thread)
    return state


def served_summary(app: Any) -> dict[str, Any]:
    """orla's side of a served run: cached share by backend, queue waits, slot lends."""
    calls = [c for row in app.report.rows() for c in row.record.calls]
    by_backend = {}
    for backend in ("light", "heavy"):
        mine = [c for c in calls if c.backend == backend]
        prompt, cached = sum(c.prompt_tokens for c in mine), sum(c.cached_tokens for c in mine)
        by_backend[backend] = {"calls": len(mine), "cached_share": cached / max(prompt, 1),
                               "queue_wait_s": round(sum(c.queue_wait_s for c in mine), 3)}
    lends = sum(1 for entry in app.cache_log if entry["decision"] == "lend")
    return {"by_backend": by_backend, "slot_lends": lends}


def load_run(way: str, conversations: int, turns: int, light_slots: int) -> dict[str, Any]:
    """One timed run of all conversations, on a fresh pair of servers."""
    counters: dict[str, dict[str, float]] = {}
    with sim_servers(Sim(LIGHT_MODEL, "light", light_slots), Sim(HEAVY_MODEL, "heavy"),
                     counters) as (light_url, heavy_url):
        graph = build_graph(*clients(light_url, heavy_url), checkpointer=InMemorySaver())
        app = serve(graph, light_url, heavy_url) if way == SERVED else graph
        try:
            with ThreadPoolExecutor(conversations) as threads:
                start = time.perf_counter()
                states = list(threads.map(
                    lambda c: converse(app, c, turns, served=way == SERVED),
                    range(conversations)))
                wall = time.perf_counter() - start
            orla_side = served_summary(app) if way == SERVED else None
        finally:
            if way == SERVED:
                app.close()
    engines = {name: engine_counters(m) for name, m in counters.items()}
    return {"way": way, "wall_s": wall, "engines": engines, "orla": orla_side,
            "replies": [replies(s) for s in states]}


def load_measure(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {BARE: [], SERVED: []}
    expected: list[list[str]] | None = None
    same = True
    for round_number in range(args.rounds):
        order = [BARE, SERVED] if round_number % 2 == 0 else [SERVED, BARE]
        for way in order:
            run = load_run(way, args.conversations, args.turns, args.light_slots)
            expected = expected or run["replies"]
            same = same and run.pop("replies") == expected
            runs[way].append(run)
            print(f"  round {round_number + 1}/{args.rounds} {way:6s} {run['wall_s']:7.2f} s",
                  flush=True)
    walls = {way: [r["wall_s"] for r in rs] for way, rs in runs.items()}
    medians = {way: statistics.median(w) for way, w in walls.items()}
    return {"conversations": args.conversations, "turns": args.turns,
            "light_slots": args.light_slots, "rounds": args.rounds, "runs": runs,
            "wall_s": walls, "median_wall_s": medians,
            "ratio": medians[SERVED] / medians[BARE],
            "round_ratios": [s / b for s, b in zip(walls[SERVED], walls[BARE], strict=True)],
            "same_replies": same}


# ---------------------------------------------------------------------------------
# Measure 2: per-invocation overhead on zero-cost servers
# ---------------------------------------------------------------------------------
BARE_STREAM = "bare, streaming clients"
OVERHEAD_MEASURES = [BARE, BARE_STREAM, SERVED]
OVERHEAD_INPUT = turn_input(0, 0, 1)  # classify, then answer: two model calls
CALLS_PER_INVOCATION = 2


class OverheadBench:
    """One thread-less app, run bare and served, on two ``instant`` servers."""

    def __init__(self, light_url: str, heavy_url: str) -> None:
        graph = build_graph(*clients(light_url, heavy_url))
        light, heavy = clients(light_url, heavy_url)
        streaming = build_graph(light.model_copy(update={"streaming": True}),
                                heavy.model_copy(update={"streaming": True}))
        self.apps = {BARE: graph, BARE_STREAM: streaming,
                     SERVED: serve(graph, light_url, heavy_url)}
        self.samples: dict[str, list[float]] = {m: [] for m in OVERHEAD_MEASURES}
        self.outputs: dict[str, list[str]] = {}

    def once(self, measure: str) -> float:
        start = time.perf_counter()
        state = self.apps[measure].invoke(OVERHEAD_INPUT)
        elapsed = time.perf_counter() - start
        if measure == SERVED:  # its run ends after it returns: not on the next one's clock
            self.apps[SERVED].session.wait_ended()
        if self.outputs.setdefault(measure, replies(state)) != replies(state):
            raise AssertionError(f"{measure}: invocations gave different replies")
        return elapsed

    def run(self, repeat: int) -> None:
        for _ in range(WARMUP):
            for measure in OVERHEAD_MEASURES:
                self.once(measure)
        gc.collect()
        gc.freeze()  # what exists now is never collected again: each collect below is short
        try:
            for round_number in range(repeat):
                shift = round_number % len(OVERHEAD_MEASURES)
                for measure in OVERHEAD_MEASURES[shift:] + OVERHEAD_MEASURES[:shift]:
                    gc.collect()
                    self.samples[measure].append(self.once(measure))
        finally:
            gc.unfreeze()
        if len({tuple(o) for o in self.outputs.values()}) != 1:
            raise AssertionError(f"bare and served replies differ: {self.outputs}")

    def rows(self) -> list[dict[str, Any]]:
        bare = statistics.median(self.samples[BARE]) * 1000
        rows = []
        for measure in OVERHEAD_MEASURES:
            ms = [s * 1000 for s in self.samples[measure]]
            median = statistics.median(ms)
            rows.append({"measure": measure, "runs": len(ms), "median_ms": median,
                         "p10_ms": percentile(ms, 0.1), "p90_ms": percentile(ms, 0.9),
                         "min_ms": min(ms), "vs_bare": median / bare,
                         "above_bare_us_per_call": (median - bare) * 1000
                         / CALLS_PER_INVOCATION})
        return rows

    def close(self) -> None:
        self.apps[SERVED].close()


def profile(bench: OverheadBench, path: Path) -> str:
    """cProfile ``PROFILE_RUNS`` served invocations, in the caller's thread and in the
    serving session's loop thread (where orla's queue, slots and HTTP client run), and
    as many bare ones; returns the text, also written to ``path``."""
    served = bench.apps[SERVED]
    caller, loop_side, bare = cProfile.Profile(), cProfile.Profile(), cProfile.Profile()

    async def switch(on: bool) -> None:  # runs on the session's loop thread
        loop_side.enable() if on else loop_side.disable()

    served.session.call(switch(True))
    caller.enable()
    started = time.perf_counter()
    for _ in range(PROFILE_RUNS):
        served.invoke(OVERHEAD_INPUT)
    served_s = time.perf_counter() - started
    caller.disable()
    served.session.call(switch(False))
    bare.enable()
    started = time.perf_counter()
    for _ in range(PROFILE_RUNS):
        bench.apps[BARE].invoke(OVERHEAD_INPUT)
    bare_s = time.perf_counter() - started
    bare.disable()
    text = io.StringIO()
    text.write(f"{PROFILE_RUNS} invocations each, under cProfile: served {served_s:.2f} s, "
               f"bare {bare_s:.2f} s\n")
    for title, profiler in [("served: caller's thread", caller),
                            ("served: orla's event-loop thread", loop_side),
                            ("bare: caller's thread", bare)]:
        for order in ("tottime", "cumulative"):
            text.write(f"\n==== {title}, by {order} ====\n")
            stats = pstats.Stats(profiler, stream=text).strip_dirs()
            stats.sort_stats(order).print_stats(PROFILE_TOP)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.getvalue(), encoding="utf-8")
    return text.getvalue()


def overhead_measure(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    light, heavy = Sim("instant", "light", args.light_slots), Sim("instant", "heavy")
    with sim_servers(light, heavy) as urls:
        bench = OverheadBench(*urls)
        try:
            bench.run(args.repeat)
            profiled = None
            if args.profile:
                profiled = profile(bench, args.out / f"{stem(args)}_profile.txt")
        finally:
            bench.close()
    rows = bench.rows()
    return ({"repeat": args.repeat, "warmup": WARMUP, "rows": rows,
             "ratio": rows[-1]["vs_bare"],
             "samples_ms": {m: [round(s * 1000, 4) for s in xs]
                            for m, xs in bench.samples.items()}}, profiled)


# ---------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    info = describe_machine()
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def engine_rows(load: dict[str, Any], engine: str) -> list[str]:
    """Cached share and prefill time of one engine, bare and served (medians of runs)."""
    def median(way: str, key: str) -> float:
        return statistics.median(r["engines"][engine][key] for r in load["runs"][way])

    bare, served = median(BARE, "prefill_s"), median(SERVED, "prefill_s")
    ratio = f"{served / bare:.2f}x" if bare else ""
    return [f"| {engine}: prompt tokens cached (engine counters) | "
            f"{median(BARE, 'cached_share'):.0%} | {median(SERVED, 'cached_share'):.0%} | |",
            f"| {engine}: simulated prefill s (engine counters) | {bare:.1f} | {served:.1f} | "
            f"{ratio} |"]


def load_lines(load: dict[str, Any]) -> list[str]:
    walls, med = load["wall_s"], load["median_wall_s"]
    served = load["runs"][SERVED]
    lends = statistics.median(r["orla"]["slot_lends"] for r in served)
    wait = statistics.median(r["orla"]["by_backend"]["light"]["queue_wait_s"] for r in served)

    def listed(values: list[float], unit: str = "") -> str:
        return ", ".join(f"{v:.2f}{unit}" for v in values)

    return [
        f"### Load: {load['conversations']} conversations x {load['turns']} turns, all at "
        f"once (light: {LIGHT_MODEL} sim with {load['light_slots']} slots, heavy: "
        f"{HEAVY_MODEL} sim; real clock); {load['rounds']} round(s), fresh servers per run",
        "",
        "| measure | bare | served | served / bare |",
        "|---|---:|---:|---:|",
        f"| wall time, median s | {med[BARE]:.2f} | {med[SERVED]:.2f} | "
        f"**{load['ratio']:.2f}x** |",
        f"| wall time per round s | {listed(walls[BARE])} | {listed(walls[SERVED])} | "
        f"{listed(load['round_ratios'], 'x')} |",
        *engine_rows(load, "light"),
        *engine_rows(load, "heavy"),
        f"| served: light slots lent to another thread, median | | {lends:g} | |",
        f"| served: orla queue wait on light, summed s, median | | {wait:.1f} | |",
        "", f"Same replies bare and served in every run: {load['same_replies']}.", ""]


def overhead_lines(overhead: dict[str, Any]) -> list[str]:
    lines = [f"### Overhead: thread-less invocations on two zero-cost (`instant`) servers, "
             f"{CALLS_PER_INVOCATION} model calls each; {overhead['repeat']} per measure "
             f"after {overhead['warmup']} warm-up rounds, interleaved", "",
             "| measure | median ms | p10 / p90 ms | min ms | / bare | above bare, µs per "
             "call |", "|---|---:|---:|---:|---:|---:|"]
    for r in overhead["rows"]:
        lines.append(f"| {r['measure']} | {r['median_ms']:.3f} | {r['p10_ms']:.3f} / "
                     f"{r['p90_ms']:.3f} | {r['min_ms']:.3f} | {r['vs_bare']:.2f}x | "
                     f"{r['above_bare_us_per_call']:.0f} |")
    ratio = f"Served / bare (medians): **{overhead['ratio']:.2f}x** (target 1.05x)."
    return [*lines, "", ratio, ""]


def report_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    lines = ["## LangGraph app: bare against served by orla", "",
             f"Machine: {m['platform']}; {m['cpu']}, {m['cores']} cores; {m['python']}; "
             f"orla {m['orla']}; langgraph {report['langgraph']}; load average "
             f"{' '.join(map(str, m['load_average']))} at start, "
             f"{' '.join(map(str, m['load_average_end']))} at the end; {report['timestamp']}; "
             f"{report['wall_s']} s in all.", "",
             f"System prompt: {report['system_prompt_tokens']} tokens (simulator's "
             "tokenizer).", ""]
    if "load" in report:
        lines += load_lines(report["load"])
    if "overhead" in report:
        lines += overhead_lines(report["overhead"])
    return lines


def stem(args: argparse.Namespace) -> str:
    """``langgraph_serve``, with the options that differ from the defaults."""
    parts = ["langgraph_serve"]
    if args.measure != "both":
        parts.append(args.measure)
    if args.conversations != DEFAULT_CONVERSATIONS:
        parts.append(f"c{args.conversations}")
    if args.light_slots != DEFAULT_LIGHT_SLOTS:
        parts.append(f"slots{args.light_slots}")
    return "_".join(parts)


def write_results(report: dict[str, Any], out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text("\n".join(report_lines(report)) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.langgraph_serve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", choices=["both", "load", "overhead"], default="both")
    parser.add_argument("--conversations", type=int, default=DEFAULT_CONVERSATIONS,
                        help=f"concurrent threads in the load measure "
                             f"(default {DEFAULT_CONVERSATIONS})")
    parser.add_argument("--turns", type=int, default=DEFAULT_TURNS,
                        help=f"invocations per thread (default {DEFAULT_TURNS})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"bare and served runs of the load measure (default "
                             f"{DEFAULT_ROUNDS})")
    parser.add_argument("--light-slots", type=int, default=DEFAULT_LIGHT_SLOTS,
                        help=f"slots of the llama.cpp-like light server (default "
                             f"{DEFAULT_LIGHT_SLOTS})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"timed invocations per measure of the overhead measure "
                             f"(default {DEFAULT_REPEAT})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the results (default benchmarks/results/)")
    parser.add_argument("--profile", action="store_true",
                        help=f"also cProfile {PROFILE_RUNS} served and bare invocations of "
                             "the overhead app")
    args = parser.parse_args(argv)
    if min(args.conversations, args.turns, args.rounds, args.repeat, args.light_slots) < 1:
        parser.error("counts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    import langgraph.version

    args = parse_args(argv)
    report: dict[str, Any] = {
        "machine": machine(), "langgraph": langgraph.version.__version__,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "system_prompt_tokens": len(tokenize(POLICY))}
    started = time.perf_counter()
    profiled = None
    if args.measure in ("both", "load"):
        print("load measure:", flush=True)
        report["load"] = load_measure(args)
    if args.measure in ("both", "overhead"):
        print("overhead measure:", flush=True)
        report["overhead"], profiled = overhead_measure(args)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print("\n".join(report_lines(report)))
    write_results(report, args.out, stem(args))
    print(f"Results written to {args.out / stem(args)}.json and .md ({report['wall_s']} s)")
    if profiled:
        print(profiled)


if __name__ == "__main__":
    main()
