"""More agents than slots on the real llama.cpp engine: who keeps which agent's KV cache.

    python -m benchmarks.agent_llamacpp [--sessions 4] [--turns 6 10] [--slots 2 3]
                                        [--rounds 2] [--concurrency 1] [--out DIR]

The workload is the generated AutoGen SelectorGroupChat-shaped trace
(``benchmarks.agent_traces.selector``): seven agents (the selector and six speakers), each
with its own system prompt, all reading one growing thread. Every prompt is made from the
trace (filler words, each segment ``--scale`` times the trace's length, a third by
default so that a 2-core CPU gets through it), not from the model's replies (cut at
``--max-tokens`` and dropped), so every setting sends the same prompts in the same order.
Sessions run ``--concurrency`` at a time on the embedded engine (SmolLM2-135M, llama.cpp
from ``xllamacpp``) with ``--slots`` slots, a fresh engine per setting. The settings:

- ``llama.cpp``: requests carry no slot; llama.cpp picks one itself (the idle slot whose
  prompt is most similar, else the least recently used), its host-RAM prompt cache off.
- ``llama.cpp+ram``: the same with llama.cpp's host-RAM prompt cache on (8 GiB, its
  default), which keeps the prompts of evicted slots and loads one back when a request
  continues it.
- ``orla-run``: orla's lending before agent identity: one slot per run, least recently
  used run lent first.
- ``orla-lru``, ``orla-cachesage``: each agent holds its own context (a slot, or a saved
  slot file when lent); the slot to lend chosen least-recently-used or by CacheSage, which
  also restores the predicted next agent's saved context into a free slot.

Reported per setting (median over ``--rounds``, the order of the settings rotating each
round): the share of prompt tokens the engine found cached (its ``cached_tokens``), the
engine's own prompt-processing seconds per call (``/metrics``), and mean and p90 time to
first token as the caller saw it (from sending the call to its first streamed token,
including orla's slot restores). Results: ``<out>/agent_llamacpp.{md,csv,json,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.agent_traces import selector
from benchmarks.compile_speed import describe_machine
from orla_sdk.agents import AgentKey, TraceCall
from orla_sdk.agents.trace import sessions as by_session
from orla_sdk.backends import DEFAULT_LOCAL_MODEL, llamacpp
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.backends.engine import EngineConfig, LocalEngine
from orla_sdk.backends.llamacpp_slots import LlamaCppControl
from orla_sdk.backends.openai_client import OpenAICompatibleBackend
from orla_sdk.backends.sim.replay import messages_of
from orla_sdk.ir import BackendSpec
from orla_sdk.runtime.pool import BackendPool

DEFAULT_OUT = Path("benchmarks") / "results" / "agent_llamacpp"
CTX_PER_SLOT = 8192  # SmolLM2's trained context
HOST_RAM_MIB = 8192  # llama.cpp's default host-RAM prompt cache


@dataclass(frozen=True)
class Setting:
    name: str
    orla: bool = False
    own_slot: bool = True  # orla: each agent its context (False: one slot per run)
    policy: str = "lru"
    host_ram_mib: int = 0

    def engine(self, slots: int) -> EngineConfig:
        return EngineConfig(slots=slots, ctx_per_slot=CTX_PER_SLOT,
                            extra={"cache_ram_mib": self.host_ram_mib})


SETTINGS = (
    Setting("llama.cpp"),
    Setting("llama.cpp+ram", host_ram_mib=HOST_RAM_MIB),
    Setting("orla-run", orla=True, own_slot=False),
    Setting("orla-lru", orla=True),
    Setting("orla-cachesage", orla=True, policy="cachesage"),
    Setting("orla-lru+ram", orla=True, host_ram_mib=HOST_RAM_MIB),
    Setting("orla-cachesage+ram", orla=True, policy="cachesage", host_ram_mib=HOST_RAM_MIB),
)


@dataclass
class Run:
    """One setting at one slot count in one round."""

    setting: str
    slots: int
    round: int
    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    engine_prompt_s: float = 0.0
    wall_s: float = 0.0

    @property
    def hit(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def row(self) -> dict[str, Any]:
        ttft = sorted(self.ttft_s)
        return {"setting": self.setting, "slots": self.slots, "round": self.round,
                "calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "hit": round(self.hit, 4),
                "engine_prompt_ms_per_call": round(1000 * self.engine_prompt_s / self.calls, 1),
                "mean_ttft_ms": round(1000 * statistics.fmean(ttft), 1),
                "p90_ttft_ms": round(1000 * ttft[int(0.9 * (len(ttft) - 1))], 1),
                "wall_s": round(self.wall_s, 1)}


Send = Callable[[ChatRequest], Awaitable[ChatResult]]


def scaled(call: TraceCall, scale: float) -> TraceCall:
    """The call with each prompt segment ``scale`` times as long (a growing thread still
    extends its earlier text, so prefixes stay prefixes)."""
    assert call.segments is not None
    return replace(call, segments=[(sid, max(1, round(n * scale))) for sid, n in call.segments])


def request_of(call: TraceCall, max_tokens: int) -> ChatRequest:
    return ChatRequest(
        model=DEFAULT_LOCAL_MODEL, messages=messages_of(call),
        params={"max_tokens": max_tokens, "temperature": 0.0},
        agent=AgentKey(call.workload, call.agent, call.session, call.step))


async def run_sessions(sessions: Sequence[Sequence[TraceCall]], send: Send, run: Run,
                       concurrency: int, max_tokens: int,
                       ended: Callable[[str], Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one_session(calls: Sequence[TraceCall]) -> None:
        async with gate:
            for call in calls:
                await timed_call(call, send, run, max_tokens)
            await ended(calls[0].session)

    await asyncio.gather(*(one_session(calls) for calls in sessions))


async def timed_call(call: TraceCall, send: Send, run: Run, max_tokens: int) -> None:
    first: float | None = None

    def on_token(_: str) -> None:
        nonlocal first
        first = first or time.perf_counter()

    request = request_of(call, max_tokens)
    started = time.perf_counter()
    result = await send(replace(request, on_token=on_token))
    run.calls += 1
    run.prompt_tokens += result.prompt_tokens
    run.cached_tokens += result.cached_tokens
    run.ttft_s.append((first or time.perf_counter()) - started)


async def measure(setting: Setting, slots: int, round_: int,
                  sessions: Sequence[Sequence[TraceCall]], args: argparse.Namespace) -> Run:
    run = Run(setting.name, slots, round_)
    engine = LocalEngine(setting.engine(slots))
    await asyncio.to_thread(engine.start)
    control = LlamaCppControl(engine.url)
    spec = llamacpp("light", engine.url)
    try:
        if setting.orla:
            await measure_orla(setting, spec, control, sessions, run, args)
        else:
            await measure_bare(spec, control, sessions, run, args)
    finally:
        await control.aclose()
        await asyncio.to_thread(engine.stop)
    return run


async def measure_bare(spec: BackendSpec, control: LlamaCppControl,
                       sessions: Sequence[Sequence[TraceCall]], run: Run,
                       args: argparse.Namespace) -> None:
    client = OpenAICompatibleBackend(spec, timeout=600)
    try:
        await warm_up(client.chat, control)

        async def ended(session: str) -> None:
            return None

        await counted(control, run, run_sessions(sessions, client.chat, run,
                                                 args.concurrency, args.max_tokens, ended))
    finally:
        await client.aclose()


async def measure_orla(setting: Setting, spec: BackendSpec, control: LlamaCppControl,
                       sessions: Sequence[Sequence[TraceCall]], run: Run,
                       args: argparse.Namespace) -> None:
    async with BackendPool([spec], slots=run.slots, timeout=600,
                           policies=[setting.policy]) as pool:
        await warm_up(lambda request: pool["light"].client.chat(request), control)

        async def send(request: ChatRequest) -> ChatResult:
            assert request.agent is not None
            served = await pool.call("light", request, run_id=request.agent.run,
                                     stage=request.agent.agent, own_slot=setting.own_slot)
            return served.result

        async def ended(session: str) -> None:
            await pool.memory.end_run(session)
            pool.end_run(session)

        await counted(control, run, run_sessions(sessions, send, run, args.concurrency,
                                                 args.max_tokens, ended))


async def warm_up(chat: Callable[[ChatRequest], Awaitable[ChatResult]],
                  control: LlamaCppControl) -> None:
    """One short call, so that no setting's first call pays for the engine's first
    allocations; its slot is erased after."""
    await chat(ChatRequest(model=DEFAULT_LOCAL_MODEL, params={"max_tokens": 1},
                           messages=[{"role": "user", "content": "hello"}], slot=0))
    await control.erase(0)


async def counted(control: LlamaCppControl, run: Run, work: Awaitable[None]) -> None:
    """Run ``work``, recording its wall time and the engine's prompt seconds."""
    before = await control.metrics()
    started = time.perf_counter()
    await work
    run.wall_s = time.perf_counter() - started
    after = await control.metrics()
    run.engine_prompt_s = after["prompt_seconds_total"] - before["prompt_seconds_total"]


async def cacheable_share(calls: Sequence[TraceCall]) -> float:
    """The share of prompt tokens an unbounded cache could serve: each prompt's longest
    common prefix with any earlier prompt (sessions one after another), in the engine's own
    tokens (its chat template and tokenizer)."""
    engine = LocalEngine(EngineConfig(slots=1, ctx_per_slot=CTX_PER_SLOT))
    await asyncio.to_thread(engine.start)
    try:
        async with httpx.AsyncClient(base_url=engine.url, timeout=120) as http:
            prompts = [await engine_tokens(http, call) for call in calls]
    finally:
        await asyncio.to_thread(engine.stop)
    reusable = sum(max((common_prefix(p, q) for q in prompts[:i]), default=0)
                   for i, p in enumerate(prompts))
    return reusable / sum(map(len, prompts))


async def engine_tokens(http: httpx.AsyncClient, call: TraceCall) -> list[int]:
    template = await http.post("/apply-template", json={"messages": messages_of(call)})
    tokens = await http.post("/tokenize", json={"content": template.json()["prompt"]})
    return list(tokens.json()["tokens"])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ---- summary -----------------------------------------------------------------------------
def medians(runs: Sequence[Run]) -> list[dict[str, Any]]:
    table = []
    for slots in sorted({r.slots for r in runs}):
        for setting in dict.fromkeys(r.setting for r in runs):
            rows = [r.row() for r in runs if r.slots == slots and r.setting == setting]
            table.append({"setting": setting, "slots": slots, **{
                key: statistics.median(row[key] for row in rows)
                for key in ("hit", "engine_prompt_ms_per_call", "mean_ttft_ms",
                            "p90_ttft_ms", "wall_s")}})
    return table


def markdown(table: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| slots | setting | cached share | engine prompt ms/call | mean TTFT ms | "
             "p90 TTFT ms | TTFT vs first | wall s |", "|---|---|---|---|---|---|---|---|"]
    for row in table:
        same = [r for r in table if r["slots"] == row["slots"]]
        base = next((r for r in same if r["setting"] == "llama.cpp"), same[0])
        change = row["mean_ttft_ms"] / base["mean_ttft_ms"] - 1
        lines.append(f"| {row['slots']} | {row['setting']} | {row['hit']:.1%} | "
                     f"{row['engine_prompt_ms_per_call']:.0f} | {row['mean_ttft_ms']:.0f} | "
                     f"{row['p90_ttft_ms']:.0f} | {change:+.1%} | {row['wall_s']:.0f} |")
    return lines


def plot(table: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slot_counts = sorted({row["slots"] for row in table})
    names = list(dict.fromkeys(row["setting"] for row in table))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(slot_counts)
    for offset, slots in enumerate(slot_counts):
        rows = {row["setting"]: row for row in table if row["slots"] == slots}
        xs = [i + offset * width for i in range(len(names))]
        axes[0].bar(xs, [rows[n]["hit"] for n in names], width, label=f"{slots} slots")
        axes[1].bar(xs, [rows[n]["mean_ttft_ms"] for n in names], width,
                    label=f"{slots} slots")
    for ax, title in zip(axes, ("prompt tokens found cached", "mean TTFT (ms)"), strict=True):
        ax.set_xticks([i + width * (len(slot_counts) - 1) / 2 for i in range(len(names))],
                      names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(out: Path, runs: Sequence[Run], lines: list[str], table: list[dict[str, Any]],
          header: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "agent_llamacpp.md").write_text("\n".join(lines) + "\n")
    (out / "agent_llamacpp.json").write_text(json.dumps(
        {**header, "medians": table, "runs": [r.row() for r in runs]}, indent=1))
    with open(out / "agent_llamacpp.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(runs[0].row()))
        writer.writeheader()
        writer.writerows(r.row() for r in runs)
    plot(table, out / "agent_llamacpp.png")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, nargs=2, default=(6, 10))
    parser.add_argument("--slots", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1 / 3)
    parser.add_argument("--settings", nargs="+", default=[s.name for s in SETTINGS],
                        choices=[s.name for s in SETTINGS])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> None:
    calls = [scaled(call, args.scale) for call in
             selector(sessions=args.sessions, turns=tuple(args.turns), seed=args.seed)]
    sessions = list(by_session(calls).values())
    chosen = [s for s in SETTINGS if s.name in args.settings]
    machine = {**describe_machine(), "load_average": list(os.getloadavg())}
    header = {"machine": machine, "calls": len(calls), "sessions": len(sessions),
              "args": {k: str(v) for k, v in vars(args).items()},
              "run": datetime.now(UTC).isoformat(timespec="seconds")}
    header["cacheable"] = bound = await cacheable_share(calls)
    print(f"{len(calls)} calls in {len(sessions)} sessions; {machine['cpu']}, "
          f"{machine['cores']} cores; an unbounded cache would serve {bound:.1%} of the "
          "prompt tokens", flush=True)
    runs = []
    for round_ in range(args.rounds):
        order = chosen[round_ % len(chosen):] + chosen[:round_ % len(chosen)]
        for slots in args.slots:
            for setting in order:
                runs.append(await measure(setting, slots, round_, sessions, args))
                print(json.dumps(runs[-1].row()), flush=True)
    table = medians(runs)
    lines = ["# More agents than slots on llama.cpp", "",
             f"Machine: {machine['platform']}; {machine['cpu']}, {machine['cores']} cores; "
             f"load average at start {' '.join(f'{x:.2f}' for x in machine['load_average'])}.",
             f"Workload: selector trace, {len(sessions)} sessions, {len(calls)} calls, "
             f"prompt segments scaled by {args.scale:.2f}, concurrency {args.concurrency}, "
             f"replies cut at {args.max_tokens} tokens; "
             f"medians of {args.rounds} rounds. Run {header['run']}.",
             f"An unbounded cache (every earlier prompt kept) would find {bound:.1%} of the "
             "prompt tokens cached.", "", *markdown(table)]
    print("\n".join(lines), flush=True)
    write(args.out, runs, lines, table, header)


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
