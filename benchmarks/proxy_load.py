"""``orla serve`` under load, against the engine it fronts, called directly.

    python -m benchmarks.proxy_load [--quick] [--levels 1,50,200,1000] [--seconds 3]
                                    [--profiles zero-cost,batching] [--out DIR]

The engine is orla's simulator behind its OpenAI-compatible HTTP server, in a process of
its own (as a real engine is), on two profiles: ``zero-cost`` (``instant``: every cost
zero, so what is measured is HTTP and orla) and ``batching`` (``qwen3-8b``: an H100
batching up to 1,024 sequences, on the real clock). The proxy, in a process of its own,
serves it as a vLLM backend (``orla.backends.vllm``, 1,024 requests in flight). Clients
send the same chat completions (``max_tokens`` 16, a prompt of their own, no orla tags)
straight to the engine, through the proxy or through the relay, streamed or not, from ``N``
concurrent keep-alive connections in this process, each sending its next request when
the last one has answered; ``N`` is each of ``--levels``.

Each (profile, mode, level) also runs through a byte relay: a process that pipes each
connection's bytes to the engine and back, reading nothing (asyncio streams). It is the
reference the proxy's figures are read against: what one more process on the path costs
before any HTTP is read, which on a small machine is already a good part of the cost at
one client. It can beat direct: it passes on whatever has arrived in one write, so the
engine's stream events reach the client in fewer, larger reads.

Each (profile, mode, level) runs direct, through the proxy and through the relay back to
back (the order rotating), after a warm-up, for ``--seconds`` each. Reported per run:
answers per second, the median and 90th-percentile latency, and the requests that hung
(no answer within ``TIMEOUT_S``) or came back incomplete (a stream without ``[DONE]``, a
status other than 200, a connection dropped mid-answer). The summary holds the targets: no
hung or incomplete request, proxy throughput at least 0.8x direct, and under 2 ms added
to the median latency of one client (judged on the zero-cost profile, where the engine
costs nothing; on the batching one the engine's step timing moves it by a millisecond or
two either way).

Results: ``<out>/proxy_load[_quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.compile_speed import describe_machine
from benchmarks.overhead import percentile

PROFILES = {"zero-cost": "instant", "batching": "qwen3-8b"}
LEVELS = (1, 50, 200, 1000)
QUICK_LEVELS = (1, 50, 200)
DEFAULT_SECONDS, QUICK_SECONDS = 3.0, 1.0
WARMUP_S = 1.0
TIMEOUT_S = 20.0  # a request without an answer by then has hung
MAX_TOKENS = 16
CONCURRENCY = 1024  # the proxy's requests in flight at the engine
MODEL = "m"  # the proxy's logical model
DEFAULT_OUT = Path(__file__).parent / "results"
DIRECT, PROXY, RELAY = "direct", "proxy", "relay"
WAYS = (DIRECT, PROXY, RELAY)
TARGET_RATIO, TARGET_ADDED_MS = 0.8, 2.0


# ---------------------------------------------------------------------------------
# The engine, the proxy and the relay, each in a process of its own
# ---------------------------------------------------------------------------------
def _serve_engine(profile: str, conn: Connection) -> None:
    from orla_sdk.backends.sim import http as sim_http
    from orla_sdk.backends.sim.engine import SimEngine

    url, stop = sim_http.serve_http(SimEngine(profile, name="sim", clock="real"))
    conn.send(url)
    conn.recv()
    stop()


def _serve_proxy(engine_url: str, profile: str, conn: Connection) -> None:
    import orla_sdk as orla
    from orla_sdk.serving.proxy import ProxyServer

    backend = orla.backends.vllm("sim", engine_url, models=[profile], concurrency=CONCURRENCY)
    with ProxyServer([backend], {MODEL: f"sim/{profile}"}) as proxy:
        orla.runtime.tune_gc_for_serving()  # as orla serve does
        conn.send(proxy.url)
        conn.recv()


def _serve_relay(engine_url: str, conn: Connection) -> None:
    """Pipe every connection's bytes to the engine and back, reading nothing."""
    engine = urlsplit(engine_url)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(client_reader: asyncio.StreamReader,
                    client_writer: asyncio.StreamWriter) -> None:
        engine_reader, engine_writer = await asyncio.open_connection(engine.hostname,
                                                                     engine.port)
        await asyncio.gather(pipe(client_reader, engine_writer),
                             pipe(engine_reader, client_writer))

    async def main() -> None:
        server = await asyncio.start_server(relay, "127.0.0.1", 0, backlog=4096)
        conn.send(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    asyncio.run(main())


def _child(target: Any, *args: Any) -> tuple[Any, Connection, str]:
    """``target(*args, conn)`` in a fresh process; the process, the pipe and its URL."""
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=target, args=(*args, theirs),
                                                           daemon=True)
    process.start()
    return process, ours, ours.recv()


@contextmanager
def servers(profile: str) -> Iterator[tuple[str, str, str]]:
    """The engine, and the proxy and the relay in front of it, started; their URLs."""
    children = [_child(_serve_engine, profile)]
    try:
        children.append(_child(_serve_proxy, children[0][2], profile))
        children.append(_child(_serve_relay, children[0][2]))
        yield children[0][2], children[1][2], children[2][2]
    finally:
        for process, conn, _ in reversed(children):
            if process.is_alive():
                conn.send("stop")
            process.join(timeout=15)
            if process.is_alive():
                process.kill()


# ---------------------------------------------------------------------------------
# The clients: HTTP/1.1 on raw asyncio streams, cheap enough to drive 1,000 connections
# ---------------------------------------------------------------------------------
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Tally:
    """What the clients saw in the counted window: each answer's latency, and the
    requests that hung or came back incomplete (counted until every client has stopped)."""

    latencies_ms: list[float] = field(default_factory=list)
    hung: int = 0
    incomplete: int = 0
    measuring: bool = False
    closing: bool = False  # the window is over: answers no longer count, failures still do

    def count(self, failure: str) -> None:
        if self.measuring:
            setattr(self, failure, getattr(self, failure) + 1)


def request_bytes(url: str, model: str, client: int, stream: bool) -> bytes:
    body = json.dumps({
        "model": model, "max_tokens": MAX_TOKENS, "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
        "messages": [{"role": "system", "content": "You answer support questions briefly."},
                     {"role": "user", "content": f"Client {client}: where is my parcel?"}]})
    host = urlsplit(url).netloc
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            f"{body}").encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """One HTTP/1.1 response: its status, whether the connection stays open, its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        return status, keep, await reader.readexactly(int(headers["content-length"]))
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, keep, bytes(body)
        body += chunk[:-2]


def complete(status: int, body: bytes, stream: bool) -> bool:
    if status != 200:
        return False
    if stream:
        return body.rstrip().endswith(b"data: [DONE]") and b'"error"' not in body
    return b'"choices"' in body


async def one_client(url: str, request: bytes, stream: bool, tally: Tally,
                     stop: asyncio.Event) -> None:
    parts = urlsplit(url)
    connection: Stream | None = None
    while not stop.is_set():
        started = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.wait_for(
                    asyncio.open_connection(parts.hostname, parts.port), TIMEOUT_S)
            reader, writer = connection
            writer.write(request)
            status, keep, body = await asyncio.wait_for(read_answer(reader), TIMEOUT_S)
        except TimeoutError:
            tally.count("hung")
            connection = _drop(connection)
            continue
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            tally.count("incomplete")
            connection = _drop(connection)
            continue
        if not keep:
            connection = _drop(connection)
        if not complete(status, body, stream):
            tally.count("incomplete")
        elif tally.measuring and not tally.closing:
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
    _drop(connection)


def _drop(connection: Stream | None) -> Stream | None:
    """Close ``connection``; the one to use next is none (a new one is opened)."""
    if connection is not None:
        connection[1].close()
    return None


async def drive(url: str, model: str, clients: int, stream: bool,
                seconds: float) -> tuple[Tally, float]:
    """``clients`` connections sending back to back: a warm-up, then ``seconds`` counted;
    the tally and the counted window's seconds. Requests under way when it closes finish
    (or time out) before this returns, and a failure among them still counts."""
    tally, stop = Tally(), asyncio.Event()
    tasks = [asyncio.create_task(one_client(url, request_bytes(url, model, c, stream), stream,
                                            tally, stop)) for c in range(clients)]
    await asyncio.sleep(WARMUP_S)
    tally.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    tally.closing = True
    stop.set()
    await asyncio.gather(*tasks)
    return tally, elapsed


# ---------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------
@dataclass
class Run:
    profile: str
    mode: str
    way: str
    clients: int
    answers: int
    hung: int
    incomplete: int
    per_s: float
    p50_ms: float
    p90_ms: float


def measure(url: str, model: str, profile: str, stream: bool, clients: int, way: str,
            seconds: float) -> Run:
    tally, window_s = asyncio.run(drive(url, model, clients, stream, seconds))
    latencies = tally.latencies_ms or [float("nan")]
    return Run(profile, "stream" if stream else "json", way, clients, len(tally.latencies_ms),
               tally.hung, tally.incomplete, len(tally.latencies_ms) / window_s,
               statistics.median(latencies), percentile(latencies, 0.9))


def run_profile(name: str, profile: str, levels: tuple[int, ...], seconds: float) -> list[Run]:
    runs = []
    turns = itertools.count()  # rotates the order of the three ways across every level
    with servers(profile) as (engine_url, proxy_url, relay_url):
        urls = {DIRECT: (engine_url, profile), PROXY: (proxy_url, MODEL),
                RELAY: (relay_url, profile)}
        for stream in (False, True):
            for clients in levels:
                shift = next(turns) % len(WAYS)
                for way in WAYS[shift:] + WAYS[:shift]:
                    url, model = urls[way]
                    run = measure(url, model, name, stream, clients, way, seconds)
                    runs.append(run)
                    print(f"  {name:9s} {run.mode:6s} {clients:5d} clients {way:6s} "
                          f"{run.per_s:8.0f}/s  p50 {run.p50_ms:8.2f} ms  hung {run.hung}  "
                          f"incomplete {run.incomplete}", flush=True)
    return runs


# ---------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------
def triples(runs: list[Run]) -> Iterator[tuple[Run, Run, Run]]:
    """(direct, proxy, relay) of each profile, mode and level."""
    keyed = {(r.profile, r.mode, r.clients, r.way): r for r in runs}
    for r in runs:
        if r.way == DIRECT:
            yield (r, keyed[(r.profile, r.mode, r.clients, PROXY)],
                   keyed[(r.profile, r.mode, r.clients, RELAY)])


def summary(runs: list[Run]) -> dict[str, Any]:
    matched = list(triples(runs))
    ratios = {f"{d.profile} {d.mode} {d.clients}": p.per_s / d.per_s for d, p, _ in matched}
    relay = {f"{d.profile} {d.mode} {d.clients}": r.per_s / d.per_s for d, _, r in matched}
    added = {f"{d.profile} {d.mode}": p.p50_ms - d.p50_ms for d, p, _ in matched
             if d.clients == 1}
    # the proxy's own latency shows where the engine costs nothing; on the batching profile
    # it sits inside the simulated engine's step timing
    judged = [v for k, v in added.items() if k.startswith("zero-cost")] or list(added.values())
    failed = sum(r.hung + r.incomplete for r in runs if r.way != RELAY)
    return {"hung_or_incomplete": failed, "throughput_ratio": ratios,
            "min_throughput_ratio": min(ratios.values()), "relay_throughput_ratio": relay,
            "added_p50_ms_one_client": added,
            "max_added_p50_ms": max(judged, default=float("nan"))}


def report_lines(report: dict[str, Any]) -> list[str]:
    m, s = report["machine"], report["summary"]
    lines = ["## `orla serve` under load: through the proxy against the engine directly", "",
             f"Machine: {m['platform']}; {m['cpu']}, {m['cores']} cores; {m['python']}; "
             f"orla {m['orla']}; load average {' '.join(map(str, m['load_average']))} at "
             f"start; {report['timestamp']}; {report['seconds']} s per run after "
             f"{WARMUP_S:g} s of warm-up; {report['wall_s']} s in all.", "",
             "| profile | mode | clients | direct /s | proxy /s | proxy / direct | "
             "relay / direct (a reference) | direct p50 ms | proxy p50 ms | added p50 ms | "
             "hung + incomplete (direct, proxy, relay) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for d, p, r in triples([Run(**r) for r in report["runs"]]):
        lines.append(f"| {d.profile} | {d.mode} | {d.clients:,} | {d.per_s:,.0f} | "
                     f"{p.per_s:,.0f} | {p.per_s / d.per_s:.2f}x | {r.per_s / d.per_s:.2f}x | "
                     f"{d.p50_ms:.2f} | {p.p50_ms:.2f} | {p.p50_ms - d.p50_ms:+.2f} | "
                     f"{d.hung + d.incomplete}, {p.hung + p.incomplete}, "
                     f"{r.hung + r.incomplete} |")
    verdict = {True: "PASS", False: "MISS"}
    lines += ["",
              f"- hung or incomplete requests: **{s['hung_or_incomplete']}** (target 0): "
              f"{verdict[s['hung_or_incomplete'] == 0]}",
              f"- proxy / direct throughput, lowest: **{s['min_throughput_ratio']:.2f}x** "
              f"(target {TARGET_RATIO}x): {verdict[s['min_throughput_ratio'] >= TARGET_RATIO]}",
              f"- the byte relay / direct throughput, lowest: "
              f"**{min(s['relay_throughput_ratio'].values()):.2f}x** (one more process on "
              "the path, nothing read)",
              f"- added p50 latency at one client, highest on the zero-cost profile: "
              f"**{s['max_added_p50_ms']:.2f} ms** (target {TARGET_ADDED_MS:g} ms): "
              f"{verdict[s['max_added_p50_ms'] < TARGET_ADDED_MS]}", ""]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy_load",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"levels {','.join(map(str, QUICK_LEVELS))}, {QUICK_SECONDS:g} s "
                        "per run: a check that it all works, not figures to quote")
    parser.add_argument("--levels", help=f"concurrent clients, comma-separated (default "
                        f"{','.join(map(str, LEVELS))})")
    parser.add_argument("--seconds", type=float, help=f"counted seconds per run (default "
                        f"{DEFAULT_SECONDS:g})")
    parser.add_argument("--profiles", default=",".join(PROFILES),
                        help=f"of {', '.join(PROFILES)} (default: both)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the results (default benchmarks/results/)")
    args = parser.parse_args(argv)
    default_levels = QUICK_LEVELS if args.quick else LEVELS
    args.levels = (tuple(int(x) for x in args.levels.split(",")) if args.levels
                   else default_levels)
    args.seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    args.profiles = args.profiles.split(",")
    if unknown := set(args.profiles) - set(PROFILES):
        parser.error(f"unknown profiles {sorted(unknown)}; known: {sorted(PROFILES)}")
    if min(args.levels) < 1 or args.seconds <= 0:
        parser.error("levels and seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = {**describe_machine(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    started = time.perf_counter()
    runs: list[Run] = []
    for name in args.profiles:
        runs += run_profile(name, PROFILES[name], args.levels, args.seconds)
    report = {"machine": machine, "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
              "seconds": args.seconds, "levels": list(args.levels),
              "wall_s": round(time.perf_counter() - started, 1),
              "runs": [asdict(r) for r in runs], "summary": summary(runs)}
    lines = report_lines(report)
    print("\n".join(lines))
    stem = "proxy_load_quick" if args.quick else "proxy_load"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"Results written to {args.out / stem}.json and .md ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
